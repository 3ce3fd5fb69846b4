// An independent client of the clustergnn gateway: @grpc/grpc-js + @grpc/proto-loader, loading the
// .proto at run time (no generated code shared with the Python side).
//
//   node client.js <proto file> <target> <request JSON>
// request JSON: {"method": "GetEmbeddings" | "Status" | "Apply", "request": {...},
//                "token": "..." | null, "rootCert": "<path>" | null}
// Prints one JSON line: {"ok": true, "response": ...} or {"ok": false, "code": <int>, "codeName": ..., "details": ...}.
// GetEmbeddings responses are decoded here: embeddings.data (little-endian float32, row-major) becomes
// "matrix": [[...], ...], per the .proto's documentation.
"use strict";

const fs = require("fs");
const grpc = require("@grpc/grpc-js");
const protoLoader = require("@grpc/proto-loader");

function main() {
  const [protoPath, target, reqJson] = process.argv.slice(2);
  const spec = JSON.parse(reqJson);
  const def = protoLoader.loadSync(protoPath, {
    keepCase: true, longs: String, enums: String, defaults: true, oneofs: true,
  });
  const v1 = grpc.loadPackageDefinition(def).clustergnn.v1;
  const creds = spec.rootCert
    ? grpc.credentials.createSsl(fs.readFileSync(spec.rootCert))
    : grpc.credentials.createInsecure();
  const service = { GetEmbeddings: "EmbeddingService", Apply: "MutationService", Status: "AdminService" }[spec.method];
  const client = new v1[service](target, creds);
  const md = new grpc.Metadata();
  if (spec.token) md.add("authorization", `Bearer ${spec.token}`);
  const deadline = new Date(Date.now() + 10000);
  client[spec.method](spec.request || {}, md, { deadline }, (err, resp) => {
    if (err) {
      const codeName = Object.keys(grpc.status).find((k) => grpc.status[k] === err.code);
      console.log(JSON.stringify({ ok: false, code: err.code, codeName, details: err.details,
                                   errorKind: (err.metadata && err.metadata.get("clustergnn-error")[0]) || null }));
    } else {
      if (resp.embeddings && resp.embeddings.data) resp.matrix = decode(resp.embeddings);
      console.log(JSON.stringify({ ok: true, response: resp }));
    }
    client.close();
  });
}

function decode(m) {
  const buf = Buffer.from(m.data);
  if (buf.length !== m.rows * m.dim * 4) throw new Error(`bad embedding size ${buf.length}`);
  const rows = [];
  for (let i = 0; i < m.rows; i++) {
    const row = [];
    for (let j = 0; j < m.dim; j++) row.push(buf.readFloatLE((i * m.dim + j) * 4));
    rows.push(row);
  }
  delete m.data;
  return rows;
}

main();
