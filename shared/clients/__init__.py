"""One client module per external system: Cosmos DB, Storage queues, the intent service, SendBird."""
