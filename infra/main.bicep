// Chatbot gateway on Azure: function app (Elastic Premium EP1, Linux, Python 3.11) with a `staging` slot,
// its storage account and queues, an artifact storage account (function packages, intent model), Cosmos DB,
// Application Insights + Log Analytics, Key Vault, a container registry and a Web App for Containers (intent
// service) with a `staging` slot.
//
// No key in plain app settings, no shared-key access to storage (identity mode, the default): the function app
// runs without an Azure Files content share, from a package blob it reads with its managed identity
// (WEBSITE_RUN_FROM_PACKAGE = blob URL + WEBSITE_RUN_FROM_PACKAGE_BLOB_MI_RESOURCE_ID). See infra/README.md,
// "Security".
//
// Deploy: see infra/README.md ("Deploy").  Scope: a resource group.
//   az deployment group create -g <rg> -f infra/main.bicep -p @infra/main.parameters.json \
//      -p sendbirdApiToken=<token> intentApiKey=<key> telemetryPiiHashKey=<key> githubRepository=<owner/repo>
//
// Conventions the tests (tests/test_deploy.py) rely on, since no Bicep compiler runs on the dev machines:
//   * app settings are object variables (`var <name> = { SETTING: value }`), one setting per line;
//   * resource names are variables built from params with take()/toLower()/replace()/uniqueString();
//   * every role assignment is named guid(<scope>.id, <identity>.id, <role id>), deterministic;
//   * Key Vault roles are assigned per secret (scope: an `existing` secret), never on the whole vault.

targetScope = 'resourceGroup'

// ---------------------------------------------------------------------------------------------------------
// Parameters
// ---------------------------------------------------------------------------------------------------------

@description('Short name used in every resource name: 2-10 lower-case letters or digits, hyphens inside only.')
@minLength(2)
@maxLength(10)
param prefix string = 'chatbot'

@description('Azure region of every resource.')
param location string = resourceGroup().location

@description('Managed identity everywhere (false, the default) or connection strings/keys as a fallback (true): AzureWebJobsStorage as a connection string and COSMOS_KEY as the account key, both as Key Vault references.')
param useConnectionStrings bool = false

@description('Always-ready instances of the function app (Elastic Premium minimum instances). 1 keeps one worker warm so the SendBird webhook (5 s timeout) never waits for a cold start.')
@minValue(1)
@maxValue(20)
param functionAlwaysReadyInstances int = 1

@description('Maximum instances the function app scales out to (Elastic Premium burst).')
@minValue(1)
@maxValue(100)
param functionMaxInstances int = 10

@description('SKU of the intent service plan. Slots need Standard (S1) or Premium (P0v3 and up).')
@allowed([
  'S1'
  'P0v3'
  'P1v3'
])
param intentPlanSku string = 'P0v3'

@description('Intent service image (registry/repository:tag) for the production slot; empty keeps a placeholder until the pipeline pushes one. infra/scripts/deploy_infra.sh passes the running image so that a re-deployment never resets it.')
param intentImage string = ''

@description('Intent service image for the staging slot; empty: same as intentImage.')
param intentStagingImage string = ''

@description('Seconds App Service waits for the intent container to answer before giving up (WEBSITES_CONTAINER_START_TIME_LIMIT, max 1800). The model loads after the port opens; readiness is /health/ready.')
@minValue(230)
@maxValue(1800)
param intentStartTimeLimitSeconds int = 600

@description('SHA-256 of the model file baked into the image of the production slot (INTENT_MODEL_SHA256: the service checks it before loading the model, and refuses a URL model without it). The workflow pins the value of the staging slot to the model it built and the swap carries it along with the image; infra/scripts/deploy_infra.sh passes the running values. Empty: not checked.')
@maxLength(64)
param intentModelSha256 string = ''

@description('INTENT_MODEL_SHA256 of the staging slot; empty: same as intentModelSha256.')
@maxLength(64)
param intentStagingModelSha256 string = ''

@description('Blob name (in the function-packages container of the artifact account) of the package the production slot runs. The workflow uploads a package per run and points the staging slot at it; the swap carries it to production. infra/scripts/deploy_infra.sh passes the running values so that a re-deployment never resets them. Empty: no package yet.')
param functionPackageBlob string = ''

@description('Package blob name of the staging slot of the function app; empty: same as functionPackageBlob.')
param functionStagingPackageBlob string = ''

@description('SendBird master API token (webhook signature key and Api-Token). Written to Key Vault when not empty; leave empty on later deployments to keep the stored secret.')
@secure()
param sendbirdApiToken string = ''

@description('Intent service key (Ocp-Apim-Subscription-Key), e.g. `openssl rand -hex 32`. Written to Key Vault when not empty.')
@secure()
param intentApiKey string = ''

@description('HMAC key for user and channel ids in telemetry (TELEMETRY_PII_HASH_KEY, >= 16 characters), e.g. `openssl rand -hex 32`. Written to Key Vault when not empty; infra/scripts/deploy_infra.sh generates one on the first deployment and passes nothing later, so the key (and the pseudonyms) stay stable.')
@secure()
param telemetryPiiHashKey string = ''

@description('Prediction cache (shared/intent_cache.py): an Azure Managed Redis instance shared by every function instance, so repeated utterances are answered without a model call. TLS only, access keys disabled: the function app signs in with its managed identity (Microsoft Entra ID, an access policy assignment on the database). Off: INTENT_CACHE_URL stays empty and nothing is created.')
param intentCache bool = false

@description('HMAC key of the prediction cache keys (INTENT_CACHE_HASH_KEY, >= 16 characters), e.g. `openssl rand -hex 32`. Written to Key Vault when not empty; needed on the first deployment with intentCache, empty later to keep the stored secret.')
@secure()
param intentCacheHashKey string = ''

@description('Model lifecycle through the CLU authoring API (intent_service/authoring): the intent service keeps projects, training jobs, trained models (content-addressed), deployment records and its audit log in the `clu` container of the artifact account and answers each projectName/deploymentName from the model deployed there, instead of the model baked into its image. Models are released through deployments and `deployments/:swap` (see README, "Two release paths"). Needs intentAuthoringKeys on the first deployment that enables it.')
param intentModelLifecycle bool = false

@description('Authoring keys of the intent service, `name:key` pairs separated by commas (the name is recorded in the audit log), e.g. `admin:$(openssl rand -hex 32)`. A prediction key (intentApiKey) cannot author. Written to Key Vault when not empty; leave empty on later deployments to keep the stored secret.')
@secure()
param intentAuthoringKeys string = ''

@description('Client id of the Entra ID app registration the console signs users in with (App Service Authentication; app roles Console.Editor and Console.Operator). Empty: no console is deployed: the console trusts the principal App Service Authentication passes, so it never runs without it.')
param consoleAuthClientId string = ''

@description('Signs the console session cookie (CONSOLE_SECRET, 32+ characters), e.g. `openssl rand -hex 32`. Written to Key Vault when not empty; needed on the first deployment with a console.')
@secure()
param consoleSecret string = ''

@description('The console key of the intent service authoring API (also list it as `console:<key>` in intentAuthoringKeys). Written to Key Vault when not empty.')
@secure()
param consoleAuthoringKey string = ''

@description('Webhook that receives a CloudEvents 1.0 event for every finished training job and every deployment change (an Event Grid topic endpoint, a Logic App trigger, ...). Empty: no events.')
param modelEventsWebhookUrl string = ''

@description('HMAC-SHA256 secret the model events are signed with (webhook-signature header). Written to Key Vault when not empty.')
@secure()
param modelEventsSecret string = ''

@description('Promotion gate of the production deployment: the largest accepted drop of accuracy on the Test utterances of the project, in points.')
param intentGateMaxAccuracyDrop string = '2'

@description('Promotion gate: the largest accepted drop of the F1 of any intent on the Test utterances, in points.')
param intentGateMaxIntentF1Drop string = '10'

@description('SendBird Platform API base URL: https://api-{application_id}.sendbird.com')
param sendbirdApiBaseUrl string

@description('The bot user id in SendBird; its own messages are ignored.')
param sendbirdBotUserId string

@description('More SendBird user ids whose messages are ignored (comma-separated).')
param sendbirdIgnoredSenderIds string = ''

@description('Reply language when nothing else tells.')
@allowed([
  'ko'
  'en'
])
param defaultLanguage string = 'ko'

@description('Order tracking link template; must contain {order_number}.')
param orderTrackingUrl string = 'https://shop.example.com/orders/{order_number}'

@description('Product search link template; must contain {category}.')
param productSearchUrl string = 'https://shop.example.com/search?category={category}'

@description('Below this confidence score (0..1) the fallback route answers.')
param intentConfidenceThreshold string = '0.5'

@description('A message routed to fallback, or answered below this confidence score (0..1), is captured for the review inbox of the console (queue review-capture, off the hot path).')
param reviewConfidenceThreshold string = '0.7'

@description('Cosmos DB serverless (pay per request unit; right for a chatbot with bursts) or provisioned throughput.')
param cosmosServerless bool = true

@description('Time to live of the state document of a user after its last write, seconds (default 90 days). The idempotency records (turns, sent replies) live in that document and expire with it.')
@minValue(86400)
param userStateTtlSeconds int = 7776000

@description('Log Analytics daily ingestion cap in GB (-1: none). Caps the telemetry bill.')
param logDailyQuotaGb int = 1

@description('GitHub repository (owner/name) allowed to deploy through OIDC (federated credential on the GitHub deployment identity, branch main). Empty: no deployment identity is created.')
param githubRepository string = ''

@description('Tags on every resource.')
param tags object = {
  app: 'chatbot-gateway'
}

// ---------------------------------------------------------------------------------------------------------
// Names (Azure limits: storage 3-24 lower-case alphanumerics; Key Vault 3-24, letter first; registry 5-50
// alphanumerics; sites 2-60; a function app name <= 24 keeps `<name>-staging` distinct within the 32
// characters the Functions host ID is derived from.)
// ---------------------------------------------------------------------------------------------------------

var suffix = uniqueString(subscription().id, resourceGroup().id, prefix)
var alnumPrefix = toLower(replace(prefix, '-', ''))
var storageAccountName = take('st${alnumPrefix}${suffix}', 24)
// Artifacts (function packages, intent model): a separate account, because the function identity must own blobs in
// the host storage account (AzureWebJobsStorage) but must not be able to write what the services run.
var artifactStorageAccountName = take('art${alnumPrefix}${suffix}', 24)
var keyVaultName = take('kv-${prefix}-${suffix}', 24)
var redisName = take('redis-${prefix}-${suffix}', 60)
var registryName = take('cr${alnumPrefix}${suffix}', 50)
var cosmosAccountName = take('cosmos-${prefix}-${suffix}', 44)
var logWorkspaceName = 'log-${prefix}-${suffix}'
var appInsightsName = 'appi-${prefix}-${suffix}'
var functionPlanName = 'plan-func-${prefix}-${suffix}'
var functionAppName = 'func-${prefix}-${take(suffix, 6)}'
var intentPlanName = 'plan-intent-${prefix}-${suffix}'
var intentAppName = 'intent-${prefix}-${take(suffix, 6)}'
var functionIdentityName = 'id-func-${prefix}-${suffix}'
var intentIdentityName = 'id-intent-${prefix}-${suffix}'
var githubIdentityName = 'id-github-${prefix}-${suffix}'
var consoleAppName = 'console-${prefix}-${take(suffix, 6)}'
var consoleIdentityName = 'id-console-${prefix}-${suffix}'
var stagingSlotName = 'staging'
var modelsContainerName = 'models'
// The intent service's authoring store (projects, jobs, trained models, deployments, audit): it writes there itself.
var cluContainerName = 'clu'
var functionPackagesContainerName = 'function-packages'

// Queue names are fixed in code (shared/models.py): inbound, one per route, reply, review capture, each
// `<name>-poison` (the host's poison queue) and each `<name>-poison-records` (the app's PoisonRecords,
// shared/models.poison_record_queue).
var stageQueues = [
  'chat-inbound'
  'chat-reply'
  'review-capture'
  'route-greeting'
  'route-help'
  'route-order-status'
  'route-product-search'
  'route-handoff'
  'route-goodbye'
  'route-fallback'
  'route-unsupported'
]
var queueNames = concat(stageQueues, map(stageQueues, q => '${q}-poison'), map(stageQueues, q => '${q}-poison-records'))

// Queue- and timer-triggered functions (functions/*.py). They are disabled in the staging slot (slot setting), so a
// build under test never consumes production messages nor rewrites the daily review exports; the swap applies
// production's values before it goes live.
var queueTriggeredFunctions = [
  // functions/review_export.py: the daily review export (timer)
  'review_export'
  'intent_stage'
  'route_greeting'
  'route_help'
  'route_order_status'
  'route_product_search'
  'route_handoff'
  'route_goodbye'
  'route_fallback'
  'route_unsupported'
  'reply_sender'
  'review_capture'
  // functions/poison.py: one trigger per `<queue>-poison` (messages the host moved there after a crash or timeout)
  'poison_chat_inbound'
  'poison_chat_reply'
  'poison_route_greeting'
  'poison_route_help'
  'poison_route_order_status'
  'poison_route_product_search'
  'poison_route_handoff'
  'poison_route_goodbye'
  'poison_route_fallback'
  'poison_route_unsupported'
]

// Cosmos DB (shared/clients/cosmos.py): database, per-user state, idempotency / sent-replies records.
var cosmosDatabaseName = 'chatbot'
var cosmosStateContainerName = 'user_state'
var cosmosPartitionKeyPath = '/user_id'
// The console's stores (shared/clients/cosmos_stores.py): the review inbox, the response catalog versions, the
// console's audit log; one document per id.
var cosmosReviewContainerName = 'review_items'
var cosmosCatalogContainerName = 'response_catalog'
var cosmosAuditContainerName = 'console_audit'
var cosmosIdPartitionKeyPath = '/id'
// The review inbox's daily export (functions/review_export.py, shared/review_export.py): JSONL files in a container
// of the runtime storage account, written by the function identity, read (downloaded) by the console's.
var reviewExportContainerName = 'review-exports'

// Built-in role definition ids.
var roles = {
  storageBlobDataOwner: 'b7e6dc6d-f1e8-4753-8033-0f276bb0955b'
  storageBlobDataReader: '2a2b9908-6ea1-4ae2-8e65-a410df84e7d1'
  storageBlobDataContributor: 'ba92f5b4-2d11-453d-a403-e96b0029c9fe'
  storageQueueDataContributor: '974c5e8b-45b9-4653-ba55-5f855dd0fb88'
  keyVaultSecretsUser: '4633458b-17de-408a-b874-0445c86b69e6'
  acrPull: '7f951dda-4ed3-4680-a7ca-43fe172d538d'
  acrPush: '8311e382-0749-4cb8-b61a-304f252e45ec'
  websiteContributor: 'de139f84-1756-47ae-9be6-808fbbe84772'
  reader: 'acdd72a7-3385-48ef-bd42-f606fba81ae7'
}
// Cosmos DB Built-in Data Contributor (data-plane role, not an Azure RBAC role).
var cosmosDataContributorRoleId = '00000000-0000-0000-0000-000000000002'

// Key Vault secret names (app settings reference them; secrets are versionless, so a new version is picked up).
var sendbirdTokenSecretName = 'sendbird-api-token'
var intentKeySecretName = 'intent-api-key'
var cosmosKeySecretName = 'cosmos-key'
var storageConnectionSecretName = 'storage-connection-string'
var telemetryPiiHashKeySecretName = 'telemetry-pii-hash-key'
var intentCacheHashKeySecretName = 'intent-cache-hash-key'
var intentAuthoringKeysSecretName = 'intent-authoring-keys'
var modelEventsSecretName = 'model-events-secret'
var consoleSecretName = 'console-session-secret'
var consoleAuthoringKeySecretName = 'console-authoring-key'

// ---------------------------------------------------------------------------------------------------------
// Monitoring
// ---------------------------------------------------------------------------------------------------------

resource logWorkspace 'Microsoft.OperationalInsights/workspaces@2022-10-01' = {
  name: logWorkspaceName
  location: location
  tags: tags
  properties: {
    sku: {
      name: 'PerGB2018'
    }
    retentionInDays: 30
    workspaceCapping: {
      dailyQuotaGb: logDailyQuotaGb
    }
  }
}

resource appInsights 'Microsoft.Insights/components@2020-02-02' = {
  name: appInsightsName
  location: location
  tags: tags
  kind: 'web'
  properties: {
    Application_Type: 'web'
    WorkspaceResourceId: logWorkspace.id
  }
}

// ---------------------------------------------------------------------------------------------------------
// Identities
// ---------------------------------------------------------------------------------------------------------

// One user-assigned identity for the function app AND its staging slot: a slot's system-assigned identity is a
// different principal, so a swap would move the code to an identity without roles.
resource functionIdentity 'Microsoft.ManagedIdentity/userAssignedIdentities@2023-01-31' = {
  name: functionIdentityName
  location: location
  tags: tags
}

resource intentIdentity 'Microsoft.ManagedIdentity/userAssignedIdentities@2023-01-31' = {
  name: intentIdentityName
  location: location
  tags: tags
}

// The GitHub Actions deployment identity: OIDC federated credential, no stored password.
resource githubIdentity 'Microsoft.ManagedIdentity/userAssignedIdentities@2023-01-31' = if (!empty(githubRepository)) {
  name: githubIdentityName
  location: location
  tags: tags
}

resource githubFederatedCredential 'Microsoft.ManagedIdentity/userAssignedIdentities/federatedIdentityCredentials@2023-01-31' = if (!empty(githubRepository)) {
  parent: githubIdentity
  name: 'github-main'
  properties: {
    issuer: 'https://token.actions.githubusercontent.com'
    subject: 'repo:${githubRepository}:ref:refs/heads/main'
    audiences: [
      'api://AzureADTokenExchange'
    ]
  }
}

// ---------------------------------------------------------------------------------------------------------
// Storage: host state and the chat queues (runtime account); function packages and the intent model (artifacts)
// ---------------------------------------------------------------------------------------------------------

resource storage 'Microsoft.Storage/storageAccounts@2023-05-01' = {
  name: storageAccountName
  location: location
  tags: tags
  kind: 'StorageV2'
  sku: {
    name: 'Standard_LRS'
  }
  properties: {
    minimumTlsVersion: 'TLS1_2'
    supportsHttpsTrafficOnly: true
    allowBlobPublicAccess: false
    // Shared-key (account key and SAS) access is off: the host, the app and the deployment all use Entra ID. There
    // is no Azure Files content share (it would need WEBSITE_CONTENTAZUREFILECONNECTIONSTRING, a key). Only the
    // connection-string fallback (useConnectionStrings=true: AzureWebJobsStorage as a Key Vault reference to a
    // connection string with the account key) turns it on, for this account only.
    allowSharedKeyAccess: useConnectionStrings
  }
}

resource queueService 'Microsoft.Storage/storageAccounts/queueServices@2023-05-01' = {
  parent: storage
  name: 'default'
}

resource queues 'Microsoft.Storage/storageAccounts/queueServices/queues@2023-05-01' = [for name in queueNames: {
  parent: queueService
  name: name
}]

resource blobService 'Microsoft.Storage/storageAccounts/blobServices@2023-05-01' = {
  parent: storage
  name: 'default'
}

resource reviewExportContainer 'Microsoft.Storage/storageAccounts/blobServices/containers@2023-05-01' = {
  parent: blobService
  name: reviewExportContainerName
  properties: {
    publicAccess: 'None'
  }
}

// Artifacts: what the services run. Written only by the GitHub deployment identity (and whoever the operator grants
// a data role at the container scope); the function identity reads its packages, the intent identity the models.
resource artifactStorage 'Microsoft.Storage/storageAccounts@2023-05-01' = {
  name: artifactStorageAccountName
  location: location
  tags: tags
  kind: 'StorageV2'
  sku: {
    name: 'Standard_LRS'
  }
  properties: {
    minimumTlsVersion: 'TLS1_2'
    supportsHttpsTrafficOnly: true
    allowBlobPublicAccess: false
    allowSharedKeyAccess: false
  }
}

resource artifactBlobService 'Microsoft.Storage/storageAccounts/blobServices@2023-05-01' = {
  parent: artifactStorage
  name: 'default'
}

resource modelsContainer 'Microsoft.Storage/storageAccounts/blobServices/containers@2023-05-01' = {
  parent: artifactBlobService
  name: modelsContainerName
  properties: {
    publicAccess: 'None'
  }
}

// The CLU authoring store of the intent service (intentModelLifecycle): the only container the intent identity
// writes. A trained model there is named by its SHA-256 and checked against it at every load; a model file can
// name only the types model.ALLOWED_TYPES lists, so whoever writes this container still cannot run code.
resource cluContainer 'Microsoft.Storage/storageAccounts/blobServices/containers@2023-05-01' = {
  parent: artifactBlobService
  name: cluContainerName
  properties: {
    publicAccess: 'None'
  }
}

resource functionPackagesContainer 'Microsoft.Storage/storageAccounts/blobServices/containers@2023-05-01' = {
  parent: artifactBlobService
  name: functionPackagesContainerName
  properties: {
    publicAccess: 'None'
  }
}

// WEBSITE_RUN_FROM_PACKAGE of each slot: a blob the function identity reads (Storage Blob Data Reader on the
// container). Until the first pipeline run it names a blob that does not exist yet: the app has no functions.
var functionPackagesUrl = 'https://${artifactStorage.name}.blob.${environment().suffixes.storage}/${functionPackagesContainerName}/'
var functionPlaceholderPackage = 'none.zip'
var functionProductionPackage = empty(functionPackageBlob) ? functionPlaceholderPackage : functionPackageBlob
var functionStagingPackage = empty(functionStagingPackageBlob) ? functionProductionPackage : functionStagingPackageBlob
var functionProductionPackageUrl = '${functionPackagesUrl}${functionProductionPackage}'
var functionStagingPackageUrl = '${functionPackagesUrl}${functionStagingPackage}'

// ---------------------------------------------------------------------------------------------------------
// Cosmos DB
// ---------------------------------------------------------------------------------------------------------

resource cosmos 'Microsoft.DocumentDB/databaseAccounts@2024-05-15' = {
  name: cosmosAccountName
  location: location
  tags: tags
  kind: 'GlobalDocumentDB'
  properties: {
    databaseAccountOfferType: 'Standard'
    consistencyPolicy: {
      defaultConsistencyLevel: 'Session'
    }
    locations: [
      {
        locationName: location
        failoverPriority: 0
        isZoneRedundant: false
      }
    ]
    capabilities: cosmosServerless ? [
      {
        name: 'EnableServerless'
      }
    ] : []
    minimalTlsVersion: 'Tls12'
    // Keys are off unless the connection-string fallback is chosen: Entra ID (managed identity) only.
    disableLocalAuth: !useConnectionStrings
  }
}

resource cosmosDatabase 'Microsoft.DocumentDB/databaseAccounts/sqlDatabases@2024-05-15' = {
  parent: cosmos
  name: cosmosDatabaseName
  properties: {
    resource: {
      id: cosmosDatabaseName
    }
  }
}

resource cosmosStateContainer 'Microsoft.DocumentDB/databaseAccounts/sqlDatabases/containers@2024-05-15' = {
  parent: cosmosDatabase
  name: cosmosStateContainerName
  properties: {
    resource: {
      id: cosmosStateContainerName
      partitionKey: {
        paths: [
          cosmosPartitionKeyPath
        ]
        kind: 'Hash'
        version: 2
      }
      // Inactive users' state (with its idempotency records) expires on its own.
      defaultTtl: userStateTtlSeconds
      // Only what is queried is indexed (the console's lookups: by channel_url, newest first by updated_at_ms);
      // not the turns history nor anything else: each indexed path costs request units on every write. Same
      // policy as shared/clients/cosmos.py STATE_INDEXING_POLICY (tests/test_cosmos_ops.py).
      indexingPolicy: {
        indexingMode: 'consistent'
        automatic: true
        includedPaths: [
          { path: '/channel_url/?' }
          { path: '/updated_at_ms/?' }
        ]
        excludedPaths: [
          { path: '/*' }
          { path: '/"_etag"/?' }
        ]
        compositeIndexes: [
          [
            { path: '/channel_url', order: 'ascending' }
            { path: '/updated_at_ms', order: 'descending' }
          ]
        ]
      }
    }
  }
}

resource cosmosReviewContainer 'Microsoft.DocumentDB/databaseAccounts/sqlDatabases/containers@2024-05-15' = {
  parent: cosmosDatabase
  name: cosmosReviewContainerName
  properties: {
    resource: {
      id: cosmosReviewContainerName
      partitionKey: {
        paths: [
          cosmosIdPartitionKeyPath
        ]
        kind: 'Hash'
        version: 2
      }
    }
  }
}

resource cosmosCatalogContainer 'Microsoft.DocumentDB/databaseAccounts/sqlDatabases/containers@2024-05-15' = {
  parent: cosmosDatabase
  name: cosmosCatalogContainerName
  properties: {
    resource: {
      id: cosmosCatalogContainerName
      partitionKey: {
        paths: [
          cosmosIdPartitionKeyPath
        ]
        kind: 'Hash'
        version: 2
      }
    }
  }
}

resource cosmosAuditContainer 'Microsoft.DocumentDB/databaseAccounts/sqlDatabases/containers@2024-05-15' = {
  parent: cosmosDatabase
  name: cosmosAuditContainerName
  properties: {
    resource: {
      id: cosmosAuditContainerName
      partitionKey: {
        paths: [
          cosmosIdPartitionKeyPath
        ]
        kind: 'Hash'
        version: 2
      }
    }
  }
}

resource cosmosFunctionDataContributor 'Microsoft.DocumentDB/databaseAccounts/sqlRoleAssignments@2024-05-15' = {
  parent: cosmos
  name: guid(cosmos.id, functionIdentity.id, cosmosDataContributorRoleId)
  properties: {
    roleDefinitionId: '${cosmos.id}/sqlRoleDefinitions/${cosmosDataContributorRoleId}'
    principalId: functionIdentity.properties.principalId
    scope: cosmos.id
  }
}

// ---------------------------------------------------------------------------------------------------------
// Key Vault (RBAC): SendBird token, intent key, telemetry hash key, and the fallback keys
// ---------------------------------------------------------------------------------------------------------

resource keyVault 'Microsoft.KeyVault/vaults@2023-07-01' = {
  name: keyVaultName
  location: location
  tags: tags
  properties: {
    tenantId: subscription().tenantId
    sku: {
      family: 'A'
      name: 'standard'
    }
    enableRbacAuthorization: true
    enableSoftDelete: true
    softDeleteRetentionInDays: 30
  }
}

resource sendbirdTokenSecret 'Microsoft.KeyVault/vaults/secrets@2023-07-01' = if (!empty(sendbirdApiToken)) {
  parent: keyVault
  name: sendbirdTokenSecretName
  properties: {
    value: sendbirdApiToken
  }
}

resource intentKeySecret 'Microsoft.KeyVault/vaults/secrets@2023-07-01' = if (!empty(intentApiKey)) {
  parent: keyVault
  name: intentKeySecretName
  properties: {
    value: intentApiKey
  }
}

resource telemetryPiiHashKeySecret 'Microsoft.KeyVault/vaults/secrets@2023-07-01' = if (!empty(telemetryPiiHashKey)) {
  parent: keyVault
  name: telemetryPiiHashKeySecretName
  properties: {
    value: telemetryPiiHashKey
  }
}

resource intentAuthoringKeysSecret 'Microsoft.KeyVault/vaults/secrets@2023-07-01' = if (!empty(intentAuthoringKeys)) {
  parent: keyVault
  name: intentAuthoringKeysSecretName
  properties: {
    value: intentAuthoringKeys
  }
}

resource modelEventsSecretValue 'Microsoft.KeyVault/vaults/secrets@2023-07-01' = if (!empty(modelEventsSecret)) {
  parent: keyVault
  name: modelEventsSecretName
  properties: {
    value: modelEventsSecret
  }
}

resource cosmosKeySecret 'Microsoft.KeyVault/vaults/secrets@2023-07-01' = if (useConnectionStrings) {
  parent: keyVault
  name: cosmosKeySecretName
  properties: {
    value: cosmos.listKeys().primaryMasterKey
  }
}

resource storageConnectionSecret 'Microsoft.KeyVault/vaults/secrets@2023-07-01' = if (useConnectionStrings) {
  parent: keyVault
  name: storageConnectionSecretName
  properties: {
    value: storageConnectionString
  }
}

// The secrets as scopes of the per-secret role assignments. `existing`: a secret written on an earlier deployment
// (empty parameter now) is still a valid scope. The first deployment must write the SendBird token, the intent key
// and the telemetry hash key (infra/scripts/deploy_infra.sh checks this; it generates the hash key).
resource sendbirdTokenSecretRef 'Microsoft.KeyVault/vaults/secrets@2023-07-01' existing = {
  parent: keyVault
  name: sendbirdTokenSecretName
}

resource intentKeySecretRef 'Microsoft.KeyVault/vaults/secrets@2023-07-01' existing = {
  parent: keyVault
  name: intentKeySecretName
}

resource telemetryPiiHashKeySecretRef 'Microsoft.KeyVault/vaults/secrets@2023-07-01' existing = {
  parent: keyVault
  name: telemetryPiiHashKeySecretName
}

resource intentAuthoringKeysSecretRef 'Microsoft.KeyVault/vaults/secrets@2023-07-01' existing = {
  parent: keyVault
  name: intentAuthoringKeysSecretName
}

resource modelEventsSecretRef 'Microsoft.KeyVault/vaults/secrets@2023-07-01' existing = {
  parent: keyVault
  name: modelEventsSecretName
}

resource cosmosKeySecretRef 'Microsoft.KeyVault/vaults/secrets@2023-07-01' existing = {
  parent: keyVault
  name: cosmosKeySecretName
}

resource storageConnectionSecretRef 'Microsoft.KeyVault/vaults/secrets@2023-07-01' existing = {
  parent: keyVault
  name: storageConnectionSecretName
}

// Versionless secret URIs: App Service picks up a new secret version (see README "Rotate the SendBird token").
// A reference App Service cannot resolve reaches the app as the literal `@Microsoft.KeyVault(...)` text; the app
// refuses to start on it, and the workflow checks every reference's status before it smoke-tests a slot.
var secretUriBase = '${keyVault.properties.vaultUri}secrets/'
var sendbirdTokenReference = '@Microsoft.KeyVault(SecretUri=${secretUriBase}${sendbirdTokenSecretName})'
var intentKeyReference = '@Microsoft.KeyVault(SecretUri=${secretUriBase}${intentKeySecretName})'
var telemetryPiiHashKeyReference = '@Microsoft.KeyVault(SecretUri=${secretUriBase}${telemetryPiiHashKeySecretName})'
var cosmosKeyReference = '@Microsoft.KeyVault(SecretUri=${secretUriBase}${cosmosKeySecretName})'
var storageConnectionReference = '@Microsoft.KeyVault(SecretUri=${secretUriBase}${storageConnectionSecretName})'
var intentAuthoringKeysReference = '@Microsoft.KeyVault(SecretUri=${secretUriBase}${intentAuthoringKeysSecretName})'
var modelEventsSecretReference = '@Microsoft.KeyVault(SecretUri=${secretUriBase}${modelEventsSecretName})'
var consoleSecretReference = '@Microsoft.KeyVault(SecretUri=${secretUriBase}${consoleSecretName})'
var consoleAuthoringKeyReference = '@Microsoft.KeyVault(SecretUri=${secretUriBase}${consoleAuthoringKeySecretName})'

// Only ever written to Key Vault (storageConnectionSecret, fallback mode), never into an app setting.
var storageConnectionString = 'DefaultEndpointsProtocol=https;AccountName=${storage.name};AccountKey=${storage.listKeys().keys[0].value};EndpointSuffix=${environment().suffixes.storage}'

// ---------------------------------------------------------------------------------------------------------
// Prediction cache (intentCache): Azure Managed Redis, TLS only (port 10000), no access keys, Entra ID for the
// function app's identity. One endpoint (EnterpriseCluster policy), so the non-cluster redis-py client works.
// ---------------------------------------------------------------------------------------------------------

resource redisCache 'Microsoft.Cache/redisEnterprise@2025-04-01' = if (intentCache) {
  name: redisName
  location: location
  tags: tags
  sku: {
    name: 'Balanced_B0'
  }
  properties: {
    minimumTlsVersion: '1.2'
  }
}

resource redisDatabase 'Microsoft.Cache/redisEnterprise/databases@2025-04-01' = if (intentCache) {
  parent: redisCache
  name: 'default'
  properties: {
    clientProtocol: 'Encrypted'
    port: 10000
    clusteringPolicy: 'EnterpriseCluster'
    evictionPolicy: 'AllKeysLRU'
    accessKeysAuthentication: 'Disabled'
  }
}

// The function app's identity may read and write keys (the 'default' access policy), nothing else can sign in.
resource redisFunctionAccess 'Microsoft.Cache/redisEnterprise/databases/accessPolicyAssignments@2025-04-01' = if (intentCache) {
  parent: redisDatabase
  name: 'functionapp'
  properties: {
    accessPolicyName: 'default'
    user: {
      objectId: functionIdentity.properties.principalId
    }
  }
}

resource intentCacheHashKeySecret 'Microsoft.KeyVault/vaults/secrets@2023-07-01' = if (!empty(intentCacheHashKey)) {
  parent: keyVault
  name: intentCacheHashKeySecretName
  properties: {
    value: intentCacheHashKey
  }
}

resource intentCacheHashKeySecretRef 'Microsoft.KeyVault/vaults/secrets@2023-07-01' existing = {
  parent: keyVault
  name: intentCacheHashKeySecretName
}

resource functionIntentCacheKeyUser 'Microsoft.Authorization/roleAssignments@2022-04-01' = if (intentCache) {
  name: guid(intentCacheHashKeySecretRef.id, functionIdentity.id, roles.keyVaultSecretsUser)
  scope: intentCacheHashKeySecretRef
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roles.keyVaultSecretsUser)
    principalId: functionIdentity.properties.principalId
    principalType: 'ServicePrincipal'
  }
  dependsOn: [
    intentCacheHashKeySecret
  ]
}

var intentCacheHashKeyReference = '@Microsoft.KeyVault(SecretUri=${secretUriBase}${intentCacheHashKeySecretName})'

// ---------------------------------------------------------------------------------------------------------
// Container registry
// ---------------------------------------------------------------------------------------------------------

resource registry 'Microsoft.ContainerRegistry/registries@2023-07-01' = {
  name: registryName
  location: location
  tags: tags
  sku: {
    name: 'Basic'
  }
  properties: {
    adminUserEnabled: false
  }
}

// ---------------------------------------------------------------------------------------------------------
// Role assignments (Azure RBAC). Names: guid(scope id, identity resource id, role id): deterministic, so a
// re-deployment updates instead of duplicating. Scopes are as narrow as the consumer allows:
//   * function identity: blobs and queues of the runtime account (AzureWebJobsStorage: the host keeps its keys, locks
//     and leases in blobs, so it needs Storage Blob Data Owner there), read on its package container, the Key
//     Vault secrets it references. Nothing on the models container or any other artifact.
//   * intent identity: pull images, read the models container, read the intent key secret; with intentModelLifecycle
//     also write its authoring store (the clu container) and read the authoring keys (and the events secret).
//   * GitHub deployment identity: deploy and swap both apps, push images, write packages and models, read the two
//     secrets the checks sign with, read the resource group.
// ---------------------------------------------------------------------------------------------------------

resource functionBlobOwner 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(storage.id, functionIdentity.id, roles.storageBlobDataOwner)
  scope: storage
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roles.storageBlobDataOwner)
    principalId: functionIdentity.properties.principalId
    principalType: 'ServicePrincipal'
  }
}

resource functionQueueContributor 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(storage.id, functionIdentity.id, roles.storageQueueDataContributor)
  scope: storage
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roles.storageQueueDataContributor)
    principalId: functionIdentity.properties.principalId
    principalType: 'ServicePrincipal'
  }
}

// The daily review export writes its files (and its marker blob) in this container only. The account-wide Blob
// Data Owner above is the host's own need (identity-based AzureWebJobsStorage); this assignment states the app's
// need at the narrowest scope, so it still holds if the host's grant is ever narrowed.
resource functionReviewExportWriter 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(reviewExportContainer.id, functionIdentity.id, roles.storageBlobDataContributor)
  scope: reviewExportContainer
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roles.storageBlobDataContributor)
    principalId: functionIdentity.properties.principalId
    principalType: 'ServicePrincipal'
  }
}

// WEBSITE_RUN_FROM_PACKAGE is fetched with the identity (WEBSITE_RUN_FROM_PACKAGE_BLOB_MI_RESOURCE_ID).
resource functionPackageReader 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(functionPackagesContainer.id, functionIdentity.id, roles.storageBlobDataReader)
  scope: functionPackagesContainer
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roles.storageBlobDataReader)
    principalId: functionIdentity.properties.principalId
    principalType: 'ServicePrincipal'
  }
}

// Key Vault: one assignment per secret the app references (scope Microsoft.KeyVault/vaults/secrets).
resource functionSendbirdTokenUser 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(sendbirdTokenSecretRef.id, functionIdentity.id, roles.keyVaultSecretsUser)
  scope: sendbirdTokenSecretRef
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roles.keyVaultSecretsUser)
    principalId: functionIdentity.properties.principalId
    principalType: 'ServicePrincipal'
  }
  dependsOn: [
    sendbirdTokenSecret
  ]
}

resource functionIntentKeyUser 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(intentKeySecretRef.id, functionIdentity.id, roles.keyVaultSecretsUser)
  scope: intentKeySecretRef
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roles.keyVaultSecretsUser)
    principalId: functionIdentity.properties.principalId
    principalType: 'ServicePrincipal'
  }
  dependsOn: [
    intentKeySecret
  ]
}

resource functionTelemetryKeyUser 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(telemetryPiiHashKeySecretRef.id, functionIdentity.id, roles.keyVaultSecretsUser)
  scope: telemetryPiiHashKeySecretRef
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roles.keyVaultSecretsUser)
    principalId: functionIdentity.properties.principalId
    principalType: 'ServicePrincipal'
  }
  dependsOn: [
    telemetryPiiHashKeySecret
  ]
}

resource functionCosmosKeyUser 'Microsoft.Authorization/roleAssignments@2022-04-01' = if (useConnectionStrings) {
  name: guid(cosmosKeySecretRef.id, functionIdentity.id, roles.keyVaultSecretsUser)
  scope: cosmosKeySecretRef
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roles.keyVaultSecretsUser)
    principalId: functionIdentity.properties.principalId
    principalType: 'ServicePrincipal'
  }
  dependsOn: [
    cosmosKeySecret
  ]
}

resource functionStorageConnectionUser 'Microsoft.Authorization/roleAssignments@2022-04-01' = if (useConnectionStrings) {
  name: guid(storageConnectionSecretRef.id, functionIdentity.id, roles.keyVaultSecretsUser)
  scope: storageConnectionSecretRef
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roles.keyVaultSecretsUser)
    principalId: functionIdentity.properties.principalId
    principalType: 'ServicePrincipal'
  }
  dependsOn: [
    storageConnectionSecret
  ]
}

// The intent service reads its key and nothing else in the vault.
resource intentKeySecretUser 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(intentKeySecretRef.id, intentIdentity.id, roles.keyVaultSecretsUser)
  scope: intentKeySecretRef
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roles.keyVaultSecretsUser)
    principalId: intentIdentity.properties.principalId
    principalType: 'ServicePrincipal'
  }
  dependsOn: [
    intentKeySecret
  ]
}

resource intentAcrPull 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(registry.id, intentIdentity.id, roles.acrPull)
  scope: registry
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roles.acrPull)
    principalId: intentIdentity.properties.principalId
    principalType: 'ServicePrincipal'
  }
}

// Read-only on the models: for an INTENT_MODEL fetched from the container (the image bakes the model in today).
resource intentModelReader 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(modelsContainer.id, intentIdentity.id, roles.storageBlobDataReader)
  scope: modelsContainer
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roles.storageBlobDataReader)
    principalId: intentIdentity.properties.principalId
    principalType: 'ServicePrincipal'
  }
}

// Model lifecycle (intentModelLifecycle): the intent service writes its authoring store, reads its authoring keys and,
// with a webhook, the secret it signs the events with.
resource intentAuthoringStoreWriter 'Microsoft.Authorization/roleAssignments@2022-04-01' = if (intentModelLifecycle) {
  name: guid(cluContainer.id, intentIdentity.id, roles.storageBlobDataContributor)
  scope: cluContainer
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roles.storageBlobDataContributor)
    principalId: intentIdentity.properties.principalId
    principalType: 'ServicePrincipal'
  }
}

resource intentAuthoringKeysUser 'Microsoft.Authorization/roleAssignments@2022-04-01' = if (intentModelLifecycle) {
  name: guid(intentAuthoringKeysSecretRef.id, intentIdentity.id, roles.keyVaultSecretsUser)
  scope: intentAuthoringKeysSecretRef
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roles.keyVaultSecretsUser)
    principalId: intentIdentity.properties.principalId
    principalType: 'ServicePrincipal'
  }
  dependsOn: [
    intentAuthoringKeysSecret
  ]
}

resource intentEventsSecretUser 'Microsoft.Authorization/roleAssignments@2022-04-01' = if (intentModelLifecycle && !empty(modelEventsWebhookUrl)) {
  name: guid(modelEventsSecretRef.id, intentIdentity.id, roles.keyVaultSecretsUser)
  scope: modelEventsSecretRef
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roles.keyVaultSecretsUser)
    principalId: intentIdentity.properties.principalId
    principalType: 'ServicePrincipal'
  }
  dependsOn: [
    modelEventsSecretValue
  ]
}

// GitHub deployment identity: deploy both apps and swap their slots, push images, write the function packages and
// the models, read the SendBird token and intent key for the smoke tests, read the resource group.
resource githubFunctionDeployer 'Microsoft.Authorization/roleAssignments@2022-04-01' = if (!empty(githubRepository)) {
  name: guid(functionApp.id, githubIdentity.id, roles.websiteContributor)
  scope: functionApp
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roles.websiteContributor)
    principalId: githubIdentity.properties.principalId
    principalType: 'ServicePrincipal'
  }
}

resource githubIntentDeployer 'Microsoft.Authorization/roleAssignments@2022-04-01' = if (!empty(githubRepository)) {
  name: guid(intentApp.id, githubIdentity.id, roles.websiteContributor)
  scope: intentApp
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roles.websiteContributor)
    principalId: githubIdentity.properties.principalId
    principalType: 'ServicePrincipal'
  }
}

resource githubAcrPush 'Microsoft.Authorization/roleAssignments@2022-04-01' = if (!empty(githubRepository)) {
  name: guid(registry.id, githubIdentity.id, roles.acrPush)
  scope: registry
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roles.acrPush)
    principalId: githubIdentity.properties.principalId
    principalType: 'ServicePrincipal'
  }
}

resource githubPackageWriter 'Microsoft.Authorization/roleAssignments@2022-04-01' = if (!empty(githubRepository)) {
  name: guid(functionPackagesContainer.id, githubIdentity.id, roles.storageBlobDataContributor)
  scope: functionPackagesContainer
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roles.storageBlobDataContributor)
    principalId: githubIdentity.properties.principalId
    principalType: 'ServicePrincipal'
  }
}

resource githubModelWriter 'Microsoft.Authorization/roleAssignments@2022-04-01' = if (!empty(githubRepository)) {
  name: guid(modelsContainer.id, githubIdentity.id, roles.storageBlobDataContributor)
  scope: modelsContainer
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roles.storageBlobDataContributor)
    principalId: githubIdentity.properties.principalId
    principalType: 'ServicePrincipal'
  }
}

resource githubSendbirdTokenReader 'Microsoft.Authorization/roleAssignments@2022-04-01' = if (!empty(githubRepository)) {
  name: guid(sendbirdTokenSecretRef.id, githubIdentity.id, roles.keyVaultSecretsUser)
  scope: sendbirdTokenSecretRef
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roles.keyVaultSecretsUser)
    principalId: githubIdentity.properties.principalId
    principalType: 'ServicePrincipal'
  }
  dependsOn: [
    sendbirdTokenSecret
  ]
}

resource githubIntentKeyReader 'Microsoft.Authorization/roleAssignments@2022-04-01' = if (!empty(githubRepository)) {
  name: guid(intentKeySecretRef.id, githubIdentity.id, roles.keyVaultSecretsUser)
  scope: intentKeySecretRef
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roles.keyVaultSecretsUser)
    principalId: githubIdentity.properties.principalId
    principalType: 'ServicePrincipal'
  }
  dependsOn: [
    intentKeySecret
  ]
}

resource githubReader 'Microsoft.Authorization/roleAssignments@2022-04-01' = if (!empty(githubRepository)) {
  name: guid(resourceGroup().id, githubIdentity.id, roles.reader)
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roles.reader)
    principalId: githubIdentity.properties.principalId
    principalType: 'ServicePrincipal'
  }
}

// ---------------------------------------------------------------------------------------------------------
// Function app: Elastic Premium EP1 (Linux) with always-ready instances and a `staging` slot, without an Azure
// Files content share: each slot runs from a package blob fetched with the managed identity (Microsoft Learn,
// "Storage considerations for Azure Functions", "Create an app without Azure Files"). Flex Consumption would
// also do without the share, but it has no deployment slots, so it cannot swap.
// ---------------------------------------------------------------------------------------------------------

resource functionPlan 'Microsoft.Web/serverfarms@2023-12-01' = {
  name: functionPlanName
  location: location
  tags: tags
  kind: 'elastic'
  sku: {
    name: 'EP1'
    tier: 'ElasticPremium'
  }
  properties: {
    reserved: true
    maximumElasticWorkerCount: functionMaxInstances
  }
}

// Settings the app reads (shared/settings.py, local.settings.sample.json), the same in both slots.
var appSettingsCommon = {
  FUNCTIONS_EXTENSION_VERSION: '~4'
  FUNCTIONS_WORKER_RUNTIME: 'python'
  AzureWebJobsFeatureFlags: 'EnableWorkerIndexing'
  // The stages wait on HTTP (intent service, Cosmos DB, SendBird): more threads than the default
  // min(32, cores + 4) keep a slow intent service from starving the webhook intake. 96 > the 64 intent-stage
  // invocations host.json allows per instance (batchSize 16 + newBatchThreshold 48), plus the other stages.
  PYTHON_THREADPOOL_THREAD_COUNT: '96'
  // The package (WEBSITE_RUN_FROM_PACKAGE, per slot below) is read with the user-assigned identity.
  WEBSITE_RUN_FROM_PACKAGE_BLOB_MI_RESOURCE_ID: functionIdentity.id
  SCM_DO_BUILD_DURING_DEPLOYMENT: 'false'
  ENABLE_ORYX_BUILD: 'false'
  APPLICATIONINSIGHTS_CONNECTION_STRING: appInsights.properties.ConnectionString
  AZURE_CLIENT_ID: functionIdentity.properties.clientId
  SENDBIRD_API_TOKEN: sendbirdTokenReference
  SENDBIRD_API_BASE_URL: sendbirdApiBaseUrl
  SENDBIRD_BOT_USER_ID: sendbirdBotUserId
  SENDBIRD_IGNORED_SENDER_IDS: sendbirdIgnoredSenderIds
  SENDBIRD_TIMEOUT_SECONDS: '5'
  WEBHOOK_MAX_BODY_BYTES: '32768'
  WEBHOOK_REPLAY_WINDOW_SECONDS: '600'
  WEBHOOK_MAX_CLOCK_SKEW_SECONDS: '60'
  COSMOS_ENDPOINT: cosmos.properties.documentEndpoint
  COSMOS_DATABASE: cosmosDatabaseName
  COSMOS_STATE_CONTAINER: cosmosStateContainerName
  COSMOS_REVIEW_CONTAINER: cosmosReviewContainerName
  COSMOS_CATALOG_CONTAINER: cosmosCatalogContainerName
  COSMOS_VERIFY_TLS: 'true'
  COSMOS_CREATE_IF_MISSING: 'false'
  COSMOS_TIMEOUT_SECONDS: '5'
  COSMOS_OP_COUNTS_DIR: '' // local tooling only (bench, tests): Cosmos DB operation counters
  INTENT_ENDPOINT: 'https://${intentApp.properties.defaultHostName}'
  INTENT_API_KEY: intentKeyReference
  INTENT_PROJECT_NAME: 'retail-bot'
  INTENT_DEPLOYMENT_NAME: 'production'
  INTENT_API_VERSION: '2023-04-01'
  INTENT_TIMEOUT_SECONDS: '3'
  INTENT_RETRIES: '2'
  INTENT_CONFIDENCE_THRESHOLD: intentConfidenceThreshold
  REVIEW_CONFIDENCE_THRESHOLD: reviewConfidenceThreshold
  INTENT_MAX_TEXT_CHARS: '1000'
  INTENT_BREAKER_FAILURES: '5'
  INTENT_BREAKER_RESET_SECONDS: '10'
  DEFAULT_LANGUAGE: defaultLanguage
  HANDOFF_RESET_SECONDS: '1800'
  STATE_HISTORY_LIMIT: '20'
  ORDER_TRACKING_URL: orderTrackingUrl
  PRODUCT_SEARCH_URL: productSearchUrl
  REPLY_MAX_RESCHEDULES: '10'
  REPLY_SEND_LEASE_SECONDS: '15'
  ORDER_MAX_WAIT_SECONDS: '30'
  RETRY_BUDGET_SECONDS: '60'
  CATALOG_REFRESH_SECONDS: '5'
  INTENT_CACHE_URL: intentCache ? 'rediss://${redisCache.properties.hostName}:10000' : ''
  INTENT_CACHE_HASH_KEY: intentCache ? intentCacheHashKeyReference : ''
  INTENT_CACHE_TTL_SECONDS: '3600'
  INTENT_CACHE_TIMEOUT_MS: '50'
  INTENT_CACHE_VERSION_TTL_SECONDS: '1'
  INTENT_CACHE_PRINCIPAL_ID: intentCache ? functionIdentity.properties.principalId : ''
  REVIEW_EXPORT_CONTAINER: reviewExportContainerName
  REVIEW_EXPORT_SCHEDULE: '0 5 0 * * *'
  REVIEW_EXPORT_CATCH_UP_DAYS: '7'
  REVIEW_EXPORT_INCLUDE_TODAY: 'false'
  TELEMETRY_SAMPLING_RATE: '1.0'
  TELEMETRY_PII_MODE: 'off'
  TELEMETRY_PII_HASH_KEY: telemetryPiiHashKeyReference
  TELEMETRY_EXPORT_INTERVAL_SECONDS: '15'
}

// Queue connection: identity-based (the host's `<connection>__accountName` form; the app's SDK client builds
// https://{account}.queue.core.windows.net with DefaultAzureCredential) or the connection string fallback.
var storageSettingsIdentity = {
  AzureWebJobsStorage__accountName: storage.name
  AzureWebJobsStorage__credential: 'managedidentity'
  AzureWebJobsStorage__clientId: functionIdentity.properties.clientId
}
var storageSettingsConnectionString = {
  AzureWebJobsStorage: storageConnectionReference
}

// Cosmos DB: an empty COSMOS_KEY means DefaultAzureCredential (AZURE_CLIENT_ID selects the user-assigned identity).
var cosmosSettingsIdentity = {
  COSMOS_KEY: ''
}
var cosmosSettingsConnectionString = {
  COSMOS_KEY: cosmosKeyReference
}

// The package each slot runs. NOT slot settings: the package is the code, so a swap moves it with the slot content
// (production gets the tested package; staging keeps the previous one for a rollback swap).
var functionSettingsProduction = {
  WEBSITE_RUN_FROM_PACKAGE: functionProductionPackageUrl
}
var functionSettingsStaging = {
  WEBSITE_RUN_FROM_PACKAGE: functionStagingPackageUrl
}
// Slot settings (sticky): they stay with their slot when the slots swap.
var triggersEnabledProduction = toObject(queueTriggeredFunctions, f => 'AzureWebJobs.${f}.Disabled', f => 'false')
var triggersDisabledStaging = toObject(queueTriggeredFunctions, f => 'AzureWebJobs.${f}.Disabled', f => 'true')
var functionSlotSettingNames = map(queueTriggeredFunctions, f => 'AzureWebJobs.${f}.Disabled')

var functionAppSettings = union(
  appSettingsCommon,
  useConnectionStrings ? storageSettingsConnectionString : storageSettingsIdentity,
  useConnectionStrings ? cosmosSettingsConnectionString : cosmosSettingsIdentity
)

var functionSiteConfig = {
  linuxFxVersion: 'Python|3.11'
  minimumElasticInstanceCount: functionAlwaysReadyInstances
  functionAppScaleLimit: functionMaxInstances
  ftpsState: 'Disabled'
  minTlsVersion: '1.2'
  http20Enabled: true
}

// Settings of the site as it is created: runtime, and the package URL from the start (an app created with
// WEBSITE_RUN_FROM_PACKAGE=1 cannot switch to a URL later). No WEBSITE_CONTENTAZUREFILECONNECTIONSTRING and no
// WEBSITE_CONTENTSHARE: that is what creates the app without an Azure Files share. The full set follows in
// sites/config.
var functionCreationSettings = [
  {
    name: 'FUNCTIONS_EXTENSION_VERSION'
    value: '~4'
  }
  {
    name: 'FUNCTIONS_WORKER_RUNTIME'
    value: 'python'
  }
  {
    name: 'WEBSITE_RUN_FROM_PACKAGE_BLOB_MI_RESOURCE_ID'
    value: functionIdentity.id
  }
]

resource functionApp 'Microsoft.Web/sites@2023-12-01' = {
  name: functionAppName
  location: location
  tags: tags
  kind: 'functionapp,linux'
  identity: {
    type: 'UserAssigned'
    userAssignedIdentities: {
      '${functionIdentity.id}': {}
    }
  }
  properties: {
    serverFarmId: functionPlan.id
    reserved: true
    httpsOnly: true
    keyVaultReferenceIdentity: functionIdentity.id
    siteConfig: union(functionSiteConfig, {
      appSettings: concat(functionCreationSettings, [
        {
          name: 'WEBSITE_RUN_FROM_PACKAGE'
          value: functionProductionPackageUrl
        }
      ])
    })
  }
  dependsOn: [
    functionBlobOwner
    functionQueueContributor
    functionPackageReader
    functionSendbirdTokenUser
    functionIntentKeyUser
    functionTelemetryKeyUser
  ]
}

resource functionAppSettingsConfig 'Microsoft.Web/sites/config@2023-12-01' = {
  parent: functionApp
  name: 'appsettings'
  properties: union(functionAppSettings, functionSettingsProduction, triggersEnabledProduction)
  dependsOn: [
    queues
    cosmosStateContainer
    cosmosFunctionDataContributor
    sendbirdTokenSecret
    intentKeySecret
    telemetryPiiHashKeySecret
    cosmosKeySecret
    storageConnectionSecret
    functionCosmosKeyUser
    functionStorageConnectionUser
  ]
}

resource functionSlotConfigNames 'Microsoft.Web/sites/config@2023-12-01' = {
  parent: functionApp
  name: 'slotConfigNames'
  properties: {
    appSettingNames: functionSlotSettingNames
  }
}

resource functionStaging 'Microsoft.Web/sites/slots@2023-12-01' = {
  parent: functionApp
  name: stagingSlotName
  location: location
  tags: tags
  kind: 'functionapp,linux'
  identity: {
    type: 'UserAssigned'
    userAssignedIdentities: {
      '${functionIdentity.id}': {}
    }
  }
  properties: {
    serverFarmId: functionPlan.id
    reserved: true
    httpsOnly: true
    keyVaultReferenceIdentity: functionIdentity.id
    siteConfig: union(functionSiteConfig, {
      appSettings: concat(functionCreationSettings, [
        {
          name: 'WEBSITE_RUN_FROM_PACKAGE'
          value: functionStagingPackageUrl
        }
      ])
    })
  }
}

resource functionStagingSettingsConfig 'Microsoft.Web/sites/slots/config@2023-12-01' = {
  parent: functionStaging
  name: 'appsettings'
  properties: union(functionAppSettings, functionSettingsStaging, triggersDisabledStaging)
  dependsOn: [
    functionAppSettingsConfig
  ]
}

// ---------------------------------------------------------------------------------------------------------
// Intent service: Web App for Containers with a `staging` slot
// ---------------------------------------------------------------------------------------------------------

resource intentPlan 'Microsoft.Web/serverfarms@2023-12-01' = {
  name: intentPlanName
  location: location
  tags: tags
  kind: 'linux'
  sku: {
    name: intentPlanSku
  }
  properties: {
    reserved: true
  }
}

// Placeholder until the pipeline pushes the first image (the registry is empty when it is created).
var placeholderImage = 'mcr.microsoft.com/appsvc/staticsite:latest'
var intentProductionImage = empty(intentImage) ? placeholderImage : intentImage
var intentStagingSlotImage = empty(intentStagingImage) ? intentProductionImage : intentStagingImage

var intentSettings = {
  WEBSITES_PORT: '5088'
  PORT: '5088'
  WEBSITES_CONTAINER_START_TIME_LIMIT: string(intentStartTimeLimitSeconds)
  WEBSITES_ENABLE_APP_SERVICE_STORAGE: 'false'
  // A swap waits until the staging container answers 200 on /health/ready (model loaded).
  WEBSITE_SWAP_WARMUP_PING_PATH: '/health/ready'
  WEBSITE_SWAP_WARMUP_PING_STATUSES: '200'
  INTENT_API_KEY: intentKeyReference
  INTENT_MODEL: '/models/retail.skops'
  INTENT_WORKERS: '1'
  APPLICATIONINSIGHTS_CONNECTION_STRING: appInsights.properties.ConnectionString
}
// The digest of the model in the image of each slot. Not a slot setting: it belongs to the image, so a swap moves
// it along (the workflow sets the value of staging together with the image it deploys there).
var intentModelDigestProduction = {
  INTENT_MODEL_SHA256: intentModelSha256
}
var intentModelDigestStaging = {
  INTENT_MODEL_SHA256: empty(intentStagingModelSha256) ? intentModelSha256 : intentStagingModelSha256
}
// Model lifecycle (intentModelLifecycle): both slots use the same authoring store, so they serve the same
// deployments (replicas converge within seconds); a code swap and a model swap are independent.
var intentAuthoringSettings = {
  INTENT_STORE_ACCOUNT_URL: 'https://${artifactStorage.name}.blob.${environment().suffixes.storage}'
  INTENT_STORE_CONTAINER: cluContainerName
  INTENT_STORE_PREFIX: ''
  INTENT_STORE_CLIENT_ID: intentIdentity.properties.clientId
  INTENT_AUTHORING_KEYS: intentAuthoringKeysReference
  INTENT_PRODUCTION_DEPLOYMENT: 'production'
  INTENT_GATE_MAX_ACCURACY_DROP: intentGateMaxAccuracyDrop
  INTENT_GATE_MAX_INTENT_F1_DROP: intentGateMaxIntentF1Drop
}
var intentEventsSettings = {
  INTENT_EVENTS_WEBHOOK_URL: modelEventsWebhookUrl
  INTENT_EVENTS_SECRET: modelEventsSecretReference
}
var intentLifecycleEvents = empty(modelEventsWebhookUrl) ? {} : intentEventsSettings
var intentLifecycleSettings = intentModelLifecycle ? union(intentAuthoringSettings, intentLifecycleEvents) : {}

var intentSiteConfig = {
  acrUseManagedIdentityCreds: true
  acrUserManagedIdentityID: intentIdentity.properties.clientId
  alwaysOn: true
  healthCheckPath: '/health/ready'
  ftpsState: 'Disabled'
  minTlsVersion: '1.2'
  http20Enabled: true
}

resource intentApp 'Microsoft.Web/sites@2023-12-01' = {
  name: intentAppName
  location: location
  tags: tags
  kind: 'app,linux,container'
  identity: {
    type: 'UserAssigned'
    userAssignedIdentities: {
      '${intentIdentity.id}': {}
    }
  }
  properties: {
    serverFarmId: intentPlan.id
    reserved: true
    httpsOnly: true
    keyVaultReferenceIdentity: intentIdentity.id
    siteConfig: union(intentSiteConfig, {
      linuxFxVersion: 'DOCKER|${intentProductionImage}'
    })
  }
  dependsOn: [
    intentAcrPull
    intentKeySecretUser
  ]
}

resource intentAppSettingsConfig 'Microsoft.Web/sites/config@2023-12-01' = {
  parent: intentApp
  name: 'appsettings'
  properties: union(intentSettings, intentModelDigestProduction, intentLifecycleSettings)
  dependsOn: [
    intentKeySecret
  ]
}

resource intentStaging 'Microsoft.Web/sites/slots@2023-12-01' = {
  parent: intentApp
  name: stagingSlotName
  location: location
  tags: tags
  kind: 'app,linux,container'
  identity: {
    type: 'UserAssigned'
    userAssignedIdentities: {
      '${intentIdentity.id}': {}
    }
  }
  properties: {
    serverFarmId: intentPlan.id
    reserved: true
    httpsOnly: true
    keyVaultReferenceIdentity: intentIdentity.id
    siteConfig: union(intentSiteConfig, {
      linuxFxVersion: 'DOCKER|${intentStagingSlotImage}'
    })
  }
}

resource intentStagingSettingsConfig 'Microsoft.Web/sites/slots/config@2023-12-01' = {
  parent: intentStaging
  name: 'appsettings'
  properties: union(intentSettings, intentModelDigestStaging, intentLifecycleSettings)
  dependsOn: [
    intentKeySecret
  ]
}

// ---------------------------------------------------------------------------------------------------------
// Console (console/): the bot team's admin app, a Python App Service on the intent service's plan, behind App
// Service Authentication (Entra ID). Deployed only with consoleAuthClientId: it reads the signed-in principal and
// its app roles from the headers App Service Authentication sets (and strips from client requests), which without
// it anyone could forge. Its identity reads and writes the Cosmos DB containers and the queues (poison replay,
// depths), and reads the secrets its settings reference; nothing else. Code: zip-deploy console/ with its
// requirements (SCM build), start command below.
// ---------------------------------------------------------------------------------------------------------

var consoleEnabled = !empty(consoleAuthClientId)

resource consoleIdentity 'Microsoft.ManagedIdentity/userAssignedIdentities@2023-01-31' = if (consoleEnabled) {
  name: consoleIdentityName
  location: location
  tags: tags
}

resource consoleSecretValue 'Microsoft.KeyVault/vaults/secrets@2023-07-01' = if (consoleEnabled && !empty(consoleSecret)) {
  parent: keyVault
  name: consoleSecretName
  properties: {
    value: consoleSecret
  }
}

resource consoleAuthoringKeyValue 'Microsoft.KeyVault/vaults/secrets@2023-07-01' = if (consoleEnabled && !empty(consoleAuthoringKey)) {
  parent: keyVault
  name: consoleAuthoringKeySecretName
  properties: {
    value: consoleAuthoringKey
  }
}

resource consoleSecretRef 'Microsoft.KeyVault/vaults/secrets@2023-07-01' existing = {
  parent: keyVault
  name: consoleSecretName
}

resource consoleAuthoringKeySecretRef 'Microsoft.KeyVault/vaults/secrets@2023-07-01' existing = {
  parent: keyVault
  name: consoleAuthoringKeySecretName
}

resource consoleQueueContributor 'Microsoft.Authorization/roleAssignments@2022-04-01' = if (consoleEnabled) {
  name: guid(storage.id, consoleIdentity.id, roles.storageQueueDataContributor)
  scope: storage
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roles.storageQueueDataContributor)
    principalId: consoleIdentity.properties.principalId
    principalType: 'ServicePrincipal'
  }
}

// The console downloads the daily review exports (read only, that container only).
resource consoleReviewExportReader 'Microsoft.Authorization/roleAssignments@2022-04-01' = if (consoleEnabled) {
  name: guid(reviewExportContainer.id, consoleIdentity.id, roles.storageBlobDataReader)
  scope: reviewExportContainer
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roles.storageBlobDataReader)
    principalId: consoleIdentity.properties.principalId
    principalType: 'ServicePrincipal'
  }
}

resource consoleSecretUser 'Microsoft.Authorization/roleAssignments@2022-04-01' = if (consoleEnabled) {
  name: guid(consoleSecretRef.id, consoleIdentity.id, roles.keyVaultSecretsUser)
  scope: consoleSecretRef
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roles.keyVaultSecretsUser)
    principalId: consoleIdentity.properties.principalId
    principalType: 'ServicePrincipal'
  }
  dependsOn: [
    consoleSecretValue
  ]
}

resource consoleAuthoringKeyUser 'Microsoft.Authorization/roleAssignments@2022-04-01' = if (consoleEnabled) {
  name: guid(consoleAuthoringKeySecretRef.id, consoleIdentity.id, roles.keyVaultSecretsUser)
  scope: consoleAuthoringKeySecretRef
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roles.keyVaultSecretsUser)
    principalId: consoleIdentity.properties.principalId
    principalType: 'ServicePrincipal'
  }
  dependsOn: [
    consoleAuthoringKeyValue
  ]
}

// The PII hash key: review items and the audit log name users by it, exactly as the function app does.
resource consoleTelemetryPiiHashKeyUser 'Microsoft.Authorization/roleAssignments@2022-04-01' = if (consoleEnabled) {
  name: guid(telemetryPiiHashKeySecretRef.id, consoleIdentity.id, roles.keyVaultSecretsUser)
  scope: telemetryPiiHashKeySecretRef
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roles.keyVaultSecretsUser)
    principalId: consoleIdentity.properties.principalId
    principalType: 'ServicePrincipal'
  }
  dependsOn: [
    telemetryPiiHashKeySecret
  ]
}

resource consoleCosmosKeyUser 'Microsoft.Authorization/roleAssignments@2022-04-01' = if (consoleEnabled && useConnectionStrings) {
  name: guid(cosmosKeySecretRef.id, consoleIdentity.id, roles.keyVaultSecretsUser)
  scope: cosmosKeySecretRef
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roles.keyVaultSecretsUser)
    principalId: consoleIdentity.properties.principalId
    principalType: 'ServicePrincipal'
  }
  dependsOn: [
    cosmosKeySecret
  ]
}

resource consoleStorageConnectionUser 'Microsoft.Authorization/roleAssignments@2022-04-01' = if (consoleEnabled && useConnectionStrings) {
  name: guid(storageConnectionSecretRef.id, consoleIdentity.id, roles.keyVaultSecretsUser)
  scope: storageConnectionSecretRef
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roles.keyVaultSecretsUser)
    principalId: consoleIdentity.properties.principalId
    principalType: 'ServicePrincipal'
  }
  dependsOn: [
    storageConnectionSecret
  ]
}

resource cosmosConsoleDataContributor 'Microsoft.DocumentDB/databaseAccounts/sqlRoleAssignments@2024-05-15' = if (consoleEnabled) {
  parent: cosmos
  name: guid(cosmos.id, consoleIdentity.id, cosmosDataContributorRoleId)
  properties: {
    roleDefinitionId: '${cosmos.id}/sqlRoleDefinitions/${cosmosDataContributorRoleId}'
    principalId: consoleIdentity.properties.principalId
    scope: cosmos.id
  }
}

// The gateway settings the console reads (shared/settings.py: the same stores, PII mode and thresholds as the
// function app; tests/test_deploy.py checks they are equal) and its own CONSOLE_* settings (console/settings.py).
var consoleSettings = {
  SCM_DO_BUILD_DURING_DEPLOYMENT: 'true'
  AZURE_CLIENT_ID: consoleEnabled ? consoleIdentity.properties.clientId : ''
  COSMOS_ENDPOINT: cosmos.properties.documentEndpoint
  COSMOS_DATABASE: cosmosDatabaseName
  COSMOS_STATE_CONTAINER: cosmosStateContainerName
  COSMOS_REVIEW_CONTAINER: cosmosReviewContainerName
  COSMOS_CATALOG_CONTAINER: cosmosCatalogContainerName
  COSMOS_VERIFY_TLS: 'true'
  COSMOS_CREATE_IF_MISSING: 'false'
  COSMOS_TIMEOUT_SECONDS: '5'
  INTENT_PROJECT_NAME: 'retail-bot'
  INTENT_DEPLOYMENT_NAME: 'production'
  INTENT_CONFIDENCE_THRESHOLD: intentConfidenceThreshold
  REVIEW_CONFIDENCE_THRESHOLD: reviewConfidenceThreshold
  CATALOG_REFRESH_SECONDS: '5'
  REVIEW_EXPORT_CONTAINER: reviewExportContainerName
  DEFAULT_LANGUAGE: defaultLanguage
  TELEMETRY_PII_MODE: 'off'
  TELEMETRY_PII_HASH_KEY: telemetryPiiHashKeyReference
  CONSOLE_AUTH_MODE: 'easyauth'
  CONSOLE_EASYAUTH_ROLES: 'Console.Editor:editor,Console.Operator:operator'
  CONSOLE_SECRET: consoleSecretReference
  CONSOLE_AUTHORING_ENDPOINT: 'https://${intentApp.properties.defaultHostName}'
  CONSOLE_AUTHORING_KEY: consoleAuthoringKeyReference
  CONSOLE_STAGING_DEPLOYMENT: 'staging'
  CONSOLE_AUDIT_CONTAINER: cosmosAuditContainerName
}
var consoleStorageIdentity = {
  AzureWebJobsStorage__accountName: storage.name
  AzureWebJobsStorage__clientId: consoleEnabled ? consoleIdentity.properties.clientId : ''
}
var consoleStorageConnectionString = {
  AzureWebJobsStorage: storageConnectionReference
}
var consoleCosmosConnectionString = {
  COSMOS_KEY: cosmosKeyReference
}

resource consoleApp 'Microsoft.Web/sites@2023-12-01' = if (consoleEnabled) {
  name: consoleAppName
  location: location
  tags: tags
  kind: 'app,linux'
  identity: {
    type: 'UserAssigned'
    userAssignedIdentities: {
      '${consoleIdentity.id}': {}
    }
  }
  properties: {
    serverFarmId: intentPlan.id
    reserved: true
    httpsOnly: true
    keyVaultReferenceIdentity: consoleIdentity.id
    siteConfig: {
      linuxFxVersion: 'PYTHON|3.11'
      appCommandLine: 'python -m console --host 0.0.0.0 --port 8000'
      alwaysOn: true
      healthCheckPath: '/healthz'
      ftpsState: 'Disabled'
      minTlsVersion: '1.2'
      http20Enabled: true
    }
  }
  dependsOn: [
    consoleSecretUser
    consoleAuthoringKeyUser
  ]
}

resource consoleAppSettingsConfig 'Microsoft.Web/sites/config@2023-12-01' = if (consoleEnabled) {
  parent: consoleApp
  name: 'appsettings'
  properties: union(consoleSettings, useConnectionStrings ? consoleStorageConnectionString : consoleStorageIdentity,
    useConnectionStrings ? consoleCosmosConnectionString : {}, {
      WEBSITES_PORT: '8000'
    })
}

// App Service Authentication: every request needs an Entra ID sign-in (except the health check); the app gets the
// principal with its app roles (Console.Editor, Console.Operator) in X-MS-CLIENT-PRINCIPAL.
resource consoleAuthConfig 'Microsoft.Web/sites/config@2023-12-01' = if (consoleEnabled) {
  parent: consoleApp
  name: 'authsettingsV2'
  properties: {
    platform: {
      enabled: true
    }
    globalValidation: {
      requireAuthentication: true
      unauthenticatedClientAction: 'RedirectToLoginPage'
      redirectToProvider: 'azureactivedirectory'
      excludedPaths: [
        '/healthz'
      ]
    }
    identityProviders: {
      azureActiveDirectory: {
        enabled: true
        registration: {
          clientId: consoleAuthClientId
          openIdIssuer: '${environment().authentication.loginEndpoint}${subscription().tenantId}/v2.0'
        }
        validation: {
          allowedAudiences: [
            'api://${consoleAuthClientId}'
            consoleAuthClientId
          ]
        }
      }
    }
    login: {
      tokenStore: {
        enabled: true
      }
    }
    httpSettings: {
      requireHttps: true
    }
  }
}

// ---------------------------------------------------------------------------------------------------------
// Outputs: what the workflows need (set them as GitHub repository variables, see README)
// ---------------------------------------------------------------------------------------------------------

output AZURE_RESOURCE_GROUP string = resourceGroup().name
output AZURE_TENANT_ID string = subscription().tenantId
output AZURE_SUBSCRIPTION_ID string = subscription().subscriptionId
output AZURE_CLIENT_ID string = empty(githubRepository) ? '' : githubIdentity.properties.clientId
output FUNCTION_APP_NAME string = functionApp.name
output FUNCTION_STAGING_HOSTNAME string = functionStaging.properties.defaultHostName
output INTENT_APP_NAME string = intentApp.name
output INTENT_STAGING_HOSTNAME string = intentStaging.properties.defaultHostName
output REGISTRY_NAME string = registry.name
output REGISTRY_LOGIN_SERVER string = registry.properties.loginServer
output KEY_VAULT_NAME string = keyVault.name
output STORAGE_ACCOUNT_NAME string = storage.name
output ARTIFACT_STORAGE_ACCOUNT_NAME string = artifactStorage.name
output MODELS_CONTAINER string = modelsContainerName
output CLU_CONTAINER string = cluContainerName
output FUNCTION_PACKAGES_CONTAINER string = functionPackagesContainerName
output CONSOLE_APP_NAME string = consoleEnabled ? consoleAppName : ''

