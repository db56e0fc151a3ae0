#!/usr/bin/env bash
# Deploy (or re-deploy) infra/main.bicep into a resource group, keeping the intent service images that run now.
#
#   infra/scripts/deploy_infra.sh <resource-group> <location> [extra az deployment parameters...]
#
# First deployment: pass the secrets and the GitHub repository, e.g.
#   SENDBIRD_API_TOKEN=... INTENT_API_KEY=$(openssl rand -hex 32) \
#     infra/scripts/deploy_infra.sh rg-chatbot koreacentral githubRepository=my-org/chatbot
# Later deployments need no secrets (the Key Vault keeps them; an empty parameter leaves them as they are).
set -euo pipefail

if [[ $# -lt 2 ]]; then
  sed -n '2,9p' "$0" >&2
  exit 2
fi
RG="$1"; LOCATION="$2"; shift 2
HERE="$(cd "$(dirname "$0")/.." && pwd)"

az group create --name "$RG" --location "$LOCATION" --output none

# A re-deployment must not reset the intent service to the placeholder image: pass what runs now.
INTENT_APP="$(az webapp list -g "$RG" --query "[?starts_with(name, 'intent-')].name | [0]" -o tsv 2>/dev/null || true)"
IMAGE=""; STAGING_IMAGE=""
if [[ -n "$INTENT_APP" ]]; then
  IMAGE="$(az webapp config show -g "$RG" -n "$INTENT_APP" --query linuxFxVersion -o tsv | sed 's/^DOCKER|//')"
  STAGING_IMAGE="$(az webapp config show -g "$RG" -n "$INTENT_APP" --slot staging --query linuxFxVersion -o tsv \
                   | sed 's/^DOCKER|//')"
fi

az deployment group create \
  --resource-group "$RG" \
  --name "chatbot-$(date -u +%Y%m%d%H%M%S)" \
  --template-file "$HERE/main.bicep" \
  --parameters "@$HERE/main.parameters.json" \
  --parameters location="$LOCATION" intentImage="$IMAGE" intentStagingImage="$STAGING_IMAGE" \
               sendbirdApiToken="${SENDBIRD_API_TOKEN:-}" intentApiKey="${INTENT_API_KEY:-}" \
  --parameters "$@" \
  --query properties.outputs -o json
