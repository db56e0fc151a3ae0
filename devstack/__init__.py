"""Local stack services for demos, tests and benchmarks (no Azure, no Docker).

- ``devstack.stack``: start/stop Azurite, the Cosmos DB stand-in, the SendBird
  stand-in, the intent service and the functions runner as subprocesses.
- ``devstack.sendbird_standin``: the SendBird Platform API stand-in (server,
  in-process class and control-API client).
- ``devstack/cosmos_server.js``: the Cosmos DB stand-in launcher (Node).
"""
