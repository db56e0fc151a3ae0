#!/usr/bin/env node
/*
 * Cosmos DB stand-in launcher: @vercel/cosmosdb-server over HTTPS, with
 *   1. HTTP keep-alive (the package's CLI answers `connection: close`, which
 *      makes the sync Python SDK redo the TLS handshake on every request);
 *   2. a fix for GET of a missing document in a partitioned container, which
 *      the package answers with 500 instead of 404.
 *
 * Usage: node devstack/cosmos_server.js [--host 127.0.0.1] [--port 8081] [--no-keep-alive]
 * Env:   COSMOS_HOST, COSMOS_PORT (used when the flags are absent).
 * Ready line on stdout: "Ready to accept HTTPS connections at <host>:<port>"
 *
 * The 404 fix (node_modules is not edited):
 *   lib/handler/read-document.js checks the partition-key fields of the stored
 *   document with `data[path]` without checking that `data` exists; for a
 *   missing document `data` is undefined, so a TypeError escapes and the
 *   generic request handler turns it into a 500. Before lib/index.js (and so
 *   lib/routes.js, which captures `read_document_1.default` when it is
 *   loaded) is required, this launcher replaces that module's `default`
 *   export with a wrapper: it calls the original handler and, if that throws
 *   while the addressed document does not exist, answers 404 NotFound like
 *   the real service. Everything else is the original behaviour.
 *
 * What the gateway relies on beyond plain CRUD, as the package does it:
 *   - partial document update (PATCH .../docs/{id}, the SDK's patch_item): set / add (".../-" appends) /
 *     replace / remove / incr / move, at most 10 operations, If-Match on the ETag (412 when it differs),
 *     applied atomically (one synchronous read-apply-replace in Node's single thread); a new _etag per write;
 *   - a container's indexingPolicy (shared/clients/cosmos.py STATE_INDEXING_POLICY, created with the container
 *     on the local stack) is accepted and stored as given (reading the container returns it), but not
 *     enforced: every query scans the container's documents, whatever is indexed, and an ORDER BY on a path
 *     the policy excludes still works here while the real service refuses it. The policy is checked against
 *     the queries the code makes by tests/test_cosmos_ops.py, not by this stand-in.
 */
"use strict";

const path = require("path");

function parseArgs(argv) {
  const args = {
    host: process.env.COSMOS_HOST || "127.0.0.1",
    port: parseInt(process.env.COSMOS_PORT || "8081", 10),
    keepAlive: true
  };
  const rest = argv.slice();
  while (rest.length) {
    const key = rest.shift();
    switch (key) {
      case "--host":
        args.host = rest.shift();
        break;
      case "-p":
      case "--port":
        args.port = parseInt(rest.shift(), 10);
        break;
      case "--no-keep-alive":
        args.keepAlive = false;
        break;
      case "-h":
      case "--help":
        process.stdout.write(
          "Usage: node cosmos_server.js [--host HOST] [--port PORT] [--no-keep-alive]\n"
        );
        process.exit(0);
        break;
      default:
        process.stderr.write(`unknown argument: ${key}\n`);
        process.exit(2);
    }
  }
  if (!Number.isInteger(args.port) || args.port < 0 || args.port > 65535) {
    process.stderr.write("invalid port\n");
    process.exit(2);
  }
  return args;
}

const PKG = "@vercel/cosmosdb-server";
const pkgDir = path.dirname(
  require.resolve(`${PKG}/package.json`, { paths: [__dirname] })
);
const libPath = rel => path.join(pkgDir, "lib", rel);

function installReadDocumentFix() {
  const readDocument = require(libPath("handler/read-document.js"));
  const partitionUtil = require(libPath("utils/get-partition-from-header.js"));
  const original = readDocument.default;
  if (typeof original !== "function" || original.__ssgPatched) return;

  const documentMissing = (account, req, { dbId, collId, docId }) => {
    try {
      const collection = account.database(dbId).collection(collId);
      if (!collection.read()) return true;
      const header = partitionUtil.default(req);
      const pk = partitionUtil.parsePartitionKey(header, docId);
      return !collection.document(docId, pk).read();
    } catch (err) {
      return false; // cannot tell: keep the original error
    }
  };

  const patched = (account, req, res, params) => {
    try {
      return original(account, req, res, params);
    } catch (err) {
      if (documentMissing(account, req, params)) {
        res.statusCode = 404;
        return {
          code: "NotFound",
          message: "Entity with the specified id does not exist in the system."
        };
      }
      throw err;
    }
  };
  patched.__ssgPatched = true;
  readDocument.default = patched;
}

function main() {
  const args = parseArgs(process.argv.slice(2));
  installReadDocumentFix();
  // Required only after the patch so that routes.js picks up the wrapper.
  const { createHttpsServer } = require(libPath("index.js"));

  const server = createHttpsServer({ keepAlive: args.keepAlive });
  // Idle keep-alive sockets stay open long enough for pooled SDK clients.
  server.keepAliveTimeout = args.keepAlive ? 120000 : 0;
  server.headersTimeout = 125000;

  server.on("error", err => {
    process.stderr.write(`cosmos stand-in failed: ${err.message}\n`);
    process.exit(1);
  });

  server.listen(args.port, args.host, () => {
    const { port } = server.address();
    process.stdout.write(
      `Ready to accept HTTPS connections at ${args.host}:${port}` +
        ` (keep-alive ${args.keepAlive ? "on" : "off"}, read-404 fix on)\n`
    );
  });

  const shutdown = () => {
    server.close(() => process.exit(0));
    // Keep-alive sockets would hold close() open: do not wait for them.
    setTimeout(() => process.exit(0), 500).unref();
  };
  process.on("SIGTERM", shutdown);
  process.on("SIGINT", shutdown);
}

main();
