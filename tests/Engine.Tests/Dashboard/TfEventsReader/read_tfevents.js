// Independent TensorBoard event-file reader for the C# TensorBoardWriter test: TFRecord framing checked with
// @aws-crypto/crc32c, Event messages decoded by protobufjs from event.proto (TensorFlow's field numbers).
// Usage: node read_tfevents.js FILE  → one JSON object per record on stdout; exit 1 with a message on bad data.
"use strict";
const fs = require("fs");
const path = require("path");
const protobuf = require("protobufjs");
const { crc32c } = require("@aws-crypto/crc32c");

function masked(bytes) {
  const crc = crc32c(bytes) >>> 0;
  return ((((crc >>> 15) | (crc << 17)) >>> 0) + 0xa282ead8) >>> 0;
}

const root = protobuf.loadSync(path.join(__dirname, "event.proto"));
const Event = root.lookupType("tensorflow.Event");
const buf = fs.readFileSync(process.argv[2]);
let pos = 0, n = 0;
while (pos < buf.length) {
  if (pos + 12 > buf.length) { console.error(`record ${n}: truncated header at byte ${pos}`); process.exit(1); }
  const lenBytes = buf.subarray(pos, pos + 8);
  const len = Number(buf.readBigUInt64LE(pos));
  if (buf.readUInt32LE(pos + 8) !== masked(lenBytes)) { console.error(`record ${n}: length CRC mismatch`); process.exit(1); }
  pos += 12;
  if (pos + len + 4 > buf.length) { console.error(`record ${n}: truncated data`); process.exit(1); }
  const data = buf.subarray(pos, pos + len);
  if (buf.readUInt32LE(pos + len) !== masked(data)) { console.error(`record ${n}: data CRC mismatch`); process.exit(1); }
  pos += len + 4;
  const ev = Event.toObject(Event.decode(data), { longs: Number, defaults: false, oneofs: false });
  console.log(JSON.stringify({
    wall_time: ev.wallTime ?? 0,
    step: ev.step ?? 0,
    file_version: ev.fileVersion ?? null,
    values: ev.summary ? (ev.summary.value || []).map(v => ({ tag: v.tag, simple_value: v.simpleValue })) : null,
  }));
  n++;
}
