#!/usr/bin/env python3
"""Writes normalization.bin.gz, the tables of UnicodeNormalization.cs, from Python's unicodedata.

The engine runs with InvariantGlobalization (no ICU), where string.Normalize does nothing, yet tokenizer.json files
(Qwen's NFC, others' NFKC) need Unicode normalization. Run once when Unicode data should change:
    python3 src/Engine.Data/Tokenization/Unicode/gen_normalization.py
Format (little-endian, gzip): b"ENUN", u8 version, u8 len + unidata version; then six sections, each u32 count and
entries: ccc (u32 cp, u8 class); canonical and compatibility full decompositions (u32 cp, u8 n, n x u32; Hangul
syllables left to the algorithm; compatibility only where it differs from canonical); primary composites (u32 a,
u32 b, u32 c); code points changed by NFC, and by NFKC, on their own (u32 cp).
"""
import gzip, os, struct, sys, unicodedata

def main():
    out = os.path.join(os.path.dirname(os.path.abspath(__file__)), "normalization.bin.gz")
    ccc, canon, compat, pairs, nfc_no, nfkc_no = [], [], [], [], [], []
    for cp in range(0x110000):
        if 0xD800 <= cp <= 0xDFFF:
            continue
        ch = chr(cp)
        c = unicodedata.combining(ch)
        if c:
            ccc.append((cp, c))
        if 0xAC00 <= cp <= 0xD7A3:
            continue
        d = unicodedata.normalize("NFD", ch)
        if d != ch:
            canon.append((cp, [ord(x) for x in d]))
        kd = unicodedata.normalize("NFKD", ch)
        if kd != d:
            compat.append((cp, [ord(x) for x in kd]))
        raw = unicodedata.decomposition(ch)
        if raw and not raw.startswith("<"):
            parts = [int(x, 16) for x in raw.split()]
            if len(parts) == 2 and unicodedata.normalize("NFC", chr(parts[0]) + chr(parts[1])) == ch:
                pairs.append((parts[0], parts[1], cp))
        if unicodedata.normalize("NFC", ch) != ch:
            nfc_no.append(cp)
        if unicodedata.normalize("NFKC", ch) != ch:
            nfkc_no.append(cp)
    buf = bytearray(b"ENUN") + bytes([1])
    v = unicodedata.unidata_version.encode()
    buf += bytes([len(v)]) + v
    buf += struct.pack("<I", len(ccc))
    for cp, c in ccc:
        buf += struct.pack("<IB", cp, c)
    for table in (canon, compat):
        buf += struct.pack("<I", len(table))
        for cp, seq in table:
            buf += struct.pack("<IB", cp, len(seq)) + struct.pack("<%dI" % len(seq), *seq)
    buf += struct.pack("<I", len(pairs))
    for a, b, c in pairs:
        buf += struct.pack("<III", a, b, c)
    for table in (nfc_no, nfkc_no):
        buf += struct.pack("<I", len(table)) + struct.pack("<%dI" % len(table), *table)
    with gzip.GzipFile(out, "wb", mtime=0) as f:
        f.write(bytes(buf))
    print(f"unicode {unicodedata.unidata_version}: {len(ccc)} classes, {len(canon)} canonical, {len(compat)} compatibility, "
          f"{len(pairs)} composites, {len(nfc_no)} NFC / {len(nfkc_no)} NFKC changed -> {out} ({os.path.getsize(out)} bytes)")

if __name__ == "__main__":
    sys.exit(main())
