#!/usr/bin/env bash
# Deploy (or re-deploy) infra/main.bicep into a resource group, keeping what the pipeline deployed: the intent
# images and model digests, and the function packages, of both slots.
#
#   infra/scripts/deploy_infra.sh <resource-group> <location> [extra az deployment parameters...]
#
# First deployment: pass the secrets and the GitHub repository, e.g.
#   SENDBIRD_API_TOKEN=... INTENT_API_KEY=$(openssl rand -hex 32) \
#     infra/scripts/deploy_infra.sh rg-chatbot koreacentral githubRepository=my-org/chatbot
# Later deployments need no secrets (the Key Vault keeps them; an empty parameter leaves them as they are).
# TELEMETRY_PII_HASH_KEY is generated here when the vault has none yet, and never replaced afterwards.
# With the prediction cache on (intentCache=true as an extra parameter or in main.parameters.json), so is
# INTENT_CACHE_HASH_KEY (32 random bytes, hex; Key Vault secret intent-cache-hash-key). Generated keys are never printed.
set -euo pipefail

if [[ $# -lt 2 ]]; then
  sed -n '2,13p' "$0" >&2
  exit 2
fi
RG="$1"; LOCATION="$2"; shift 2
HERE="$(cd "$(dirname "$0")/.." && pwd)"

az group create --name "$RG" --location "$LOCATION" --output none

# App setting NAME of a site (or slot, with "--slot staging"), empty when unset or when the app does not exist.
setting() {  # <az webapp|functionapp> <app> <NAME> [--slot staging]
  local kind="$1" app="$2" name="$3"; shift 3
  [[ -n "$app" ]] || return 0
  az "$kind" config appsettings list -g "$RG" -n "$app" "$@" --query "[?name=='$name'].value | [0]" -o tsv \
    2>/dev/null || true
}

# Does the vault hold this secret? Asked through Azure Resource Manager (secret metadata, never the value), so
# the deploying user needs no data-plane role on the vault.
KV_ID="$(az keyvault list -g "$RG" --query "[0].id" -o tsv 2>/dev/null || true)"
secret_exists() {
  [[ -n "$KV_ID" ]] && az resource show --ids "$KV_ID/secrets/$1" --api-version 2023-07-01 --output none 2>/dev/null
}
# The per-secret role assignments need every referenced secret to exist.
for pair in "sendbird-api-token:SENDBIRD_API_TOKEN" "intent-api-key:INTENT_API_KEY"; do
  secret="${pair%%:*}"; env_name="${pair#*:}"
  if [[ -z "${!env_name:-}" ]] && ! secret_exists "$secret"; then
    echo "the Key Vault has no secret '$secret' yet: set $env_name for this (first) deployment" >&2
    exit 2
  fi
done
if [[ -z "${TELEMETRY_PII_HASH_KEY:-}" ]] && ! secret_exists telemetry-pii-hash-key; then
  TELEMETRY_PII_HASH_KEY="$(openssl rand -hex 32)"
  echo "generated TELEMETRY_PII_HASH_KEY (stored in Key Vault as telemetry-pii-hash-key)" >&2
fi
# The prediction cache (intentCache): an extra parameter intentCache=... wins over main.parameters.json.
INTENT_CACHE=false
if tr -d ' \t\r\n' < "$HERE/main.parameters.json" | grep -q '"intentCache":{"value":true}'; then
  INTENT_CACHE=true
fi
for arg in "$@"; do
  case "$arg" in
    intentCache=true|intentCache=True) INTENT_CACHE=true ;;
    intentCache=*) INTENT_CACHE=false ;;
  esac
done
# Its role assignment needs the secret: generated once, when the vault has none, and kept afterwards (a new key
# only makes every cached prediction a miss, but there is no reason to replace it on each deployment).
if [[ "$INTENT_CACHE" == true && -z "${INTENT_CACHE_HASH_KEY:-}" ]] && ! secret_exists intent-cache-hash-key; then
  INTENT_CACHE_HASH_KEY="$(openssl rand -hex 32)"
  echo "generated INTENT_CACHE_HASH_KEY (stored in Key Vault as intent-cache-hash-key)" >&2
fi

# A re-deployment must not reset what the pipeline deployed: pass what runs now.
INTENT_APP="$(az webapp list -g "$RG" --query "[?starts_with(name, 'intent-')].name | [0]" -o tsv 2>/dev/null || true)"
IMAGE=""; STAGING_IMAGE=""
if [[ -n "$INTENT_APP" ]]; then
  IMAGE="$(az webapp config show -g "$RG" -n "$INTENT_APP" --query linuxFxVersion -o tsv | sed 's/^DOCKER|//')"
  STAGING_IMAGE="$(az webapp config show -g "$RG" -n "$INTENT_APP" --slot staging --query linuxFxVersion -o tsv \
                   | sed 's/^DOCKER|//')"
fi
MODEL_SHA256="$(setting webapp "$INTENT_APP" INTENT_MODEL_SHA256)"
STAGING_MODEL_SHA256="$(setting webapp "$INTENT_APP" INTENT_MODEL_SHA256 --slot staging)"

FUNCTION_APP="$(az functionapp list -g "$RG" --query "[?starts_with(name, 'func-')].name | [0]" -o tsv 2>/dev/null \
                || true)"
if [[ -n "$(setting functionapp "$FUNCTION_APP" WEBSITE_CONTENTAZUREFILECONNECTIONSTRING)" ]]; then
  # An app created with an Azure Files content share (WEBSITE_RUN_FROM_PACKAGE=1) cannot switch to a package URL.
  echo "$FUNCTION_APP was created with an Azure Files content share (an account key in its settings)." >&2
  echo "Delete it once, then run this again (queues, state and secrets are kept; the name and URL stay):" >&2
  echo "  az functionapp delete -g $RG -n $FUNCTION_APP" >&2
  exit 2
fi
package_blob() {  # the blob name of a slot's WEBSITE_RUN_FROM_PACKAGE URL, empty for anything else
  local url
  url="$(setting functionapp "$FUNCTION_APP" WEBSITE_RUN_FROM_PACKAGE "$@")"
  [[ "$url" == https://*/function-packages/* ]] && echo "${url##*/}" || true
}
PACKAGE="$(package_blob)"
STAGING_PACKAGE="$(package_blob --slot staging)"

az deployment group create \
  --resource-group "$RG" \
  --name "chatbot-$(date -u +%Y%m%d%H%M%S)" \
  --template-file "$HERE/main.bicep" \
  --parameters "@$HERE/main.parameters.json" \
  --parameters location="$LOCATION" intentImage="$IMAGE" intentStagingImage="$STAGING_IMAGE" \
               intentModelSha256="$MODEL_SHA256" intentStagingModelSha256="$STAGING_MODEL_SHA256" \
               functionPackageBlob="$PACKAGE" functionStagingPackageBlob="$STAGING_PACKAGE" \
               sendbirdApiToken="${SENDBIRD_API_TOKEN:-}" intentApiKey="${INTENT_API_KEY:-}" \
               telemetryPiiHashKey="${TELEMETRY_PII_HASH_KEY:-}" intentCacheHashKey="${INTENT_CACHE_HASH_KEY:-}" \
  --parameters "$@" \
  --query properties.outputs -o json
