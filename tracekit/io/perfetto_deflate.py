"""zlib streams (RFC 1950/1951) for ``compressed_packets`` bundles, compiled.

Perfetto inflates each ``compressed_packets`` bundle with zlib (``inflateInit2``, zlib or gzip
header accepted), so any valid deflate stream will do. Python's ``zlib.compress(data, 1)`` runs at
about 110 MB/s on the development machine, and on a timeline's packets most of that is spent in its
per-byte entropy coder (Huffman-only mode is no faster). This module is a small greedy deflate
written for this data and compiled with numba:

* LZ77 over a 32 KiB window with one hash probe per position: the next eight bytes are hashed
  (Fibonacci hashing, 2**17 buckets holding the last position) and a candidate must match all
  eight; matches are extended eight bytes at a time (XOR and count trailing zeros); greedy, with
  only match starts inserted. Hashing eight bytes rather than four is faster and compresses these
  packets better: short repeats of tag bytes would otherwise displace the useful candidates;
* one dynamic-Huffman block per :data:`BLOCK_SYMBOLS` symbols (code lengths limited to 15 bits,
  7 for the code-length code), or a stored block where that would be smaller;
* a 64-bit bit buffer; Adler-32 at the end (vectorized).

It runs without the GIL (a worker thread compresses one bundle while the writer encodes the next),
and gives the same bytes on every machine (nothing depends on the zlib build). Tests hold
``zlib.decompress(compress(x)) == x`` for arbitrary ``x``.
"""

from __future__ import annotations

import numba
import numpy as np
from llvmlite import ir
from numba import types
from numba.extending import intrinsic

#: Symbols (literals and matches) per deflate block: each block gets its own Huffman codes.
BLOCK_SYMBOLS = 1 << 15
_HASH_BITS = 17
_WINDOW = 32768
_MIN_MATCH = 8  # matches are found by hashing eight bytes: shorter repeats stay literals
_HASH_MUL = -7046029254386353131  # 0x9E3779B97F4A7C15 as int64 (Fibonacci hashing)
_MAX_MATCH = 258

_LEN_BASE = np.array([3, 4, 5, 6, 7, 8, 9, 10, 11, 13, 15, 17, 19, 23, 27, 31, 35, 43, 51, 59, 67, 83, 99, 115, 131,
                      163, 195, 227, 258], np.int64)
_LEN_EXTRA = np.array([0] * 8 + [1] * 4 + [2] * 4 + [3] * 4 + [4] * 4 + [5] * 4 + [0], np.int64)
_DIST_BASE = np.array([1, 2, 3, 4, 5, 7, 9, 13, 17, 25, 33, 49, 65, 97, 129, 193, 257, 385, 513, 769, 1025, 1537, 2049,
                       3073, 4097, 6145, 8193, 12289, 16385, 24577], np.int64)
_DIST_EXTRA = np.array([0, 0, 0, 0] + [k // 2 for k in range(2, 28)], np.int64)
#: Order in which the code-length code's lengths are written (RFC 1951 3.2.7).
_CL_ORDER = np.array([16, 17, 18, 0, 8, 7, 9, 6, 10, 5, 11, 4, 12, 3, 13, 2, 14, 1, 15], np.int64)


def _code_tables() -> tuple[np.ndarray, np.ndarray]:
    len_code = np.zeros(_MAX_MATCH + 1, np.int64)
    for c in range(28):
        base = int(_LEN_BASE[c])
        len_code[base:base + (1 << int(_LEN_EXTRA[c]))] = c
    len_code[_MAX_MATCH] = 28
    dist_code = np.zeros(_WINDOW + 1, np.int64)
    for c in range(30):
        base = int(_DIST_BASE[c])
        dist_code[base:base + (1 << int(_DIST_EXTRA[c]))] = c
    return len_code, dist_code


_LEN_CODE, _DIST_CODE = _code_tables()
#: The code tables, passed to the compiled functions as an argument (a compiled function that
#: refers to a large global array cannot be cached).
TABLES = (_LEN_CODE, _LEN_EXTRA, _LEN_BASE, _DIST_CODE, _DIST_EXTRA, _DIST_BASE, _CL_ORDER)


@numba.njit(cache=True, nogil=True)
def _code_lengths(freq, max_bits, out):  # pragma: no cover - compiled
    """Huffman code lengths of ``freq`` into ``out``, none longer than ``max_bits``, complete
    (Kraft sum 1: zlib's inflate rejects incomplete codes); at least two symbols get a code."""
    out[:] = 0
    m = 0
    for s in range(freq.shape[0]):
        if freq[s] > 0:
            m += 1
    if m < 2:
        first = -1
        for s in range(freq.shape[0]):
            if freq[s] > 0:
                first = s
        if first < 0:
            out[0] = 1
            out[1] = 1
        else:
            out[first] = 1
            out[1 if first == 0 else 0] = 1
        return
    syms = np.empty(m, np.int64)
    k = 0
    for s in range(freq.shape[0]):
        if freq[s] > 0:
            syms[k] = s
            k += 1
    order = syms.copy()  # rarest first, ties by symbol: insertion sort (at most 286 symbols)
    for i in range(1, m):
        s = order[i]
        j = i - 1
        while j >= 0 and freq[order[j]] > freq[s]:
            order[j + 1] = order[j]
            j -= 1
        order[j + 1] = s
    weight = np.empty(2 * m - 1, np.int64)
    parent = np.empty(2 * m - 1, np.int64)
    for i in range(m):
        weight[i] = freq[order[i]]
    leaf, inner, nxt = 0, m, m
    for _ in range(m - 1):
        pair = np.empty(2, np.int64)
        for j in range(2):
            if leaf < m and (inner >= nxt or weight[leaf] <= weight[inner]):
                pair[j] = leaf
                leaf += 1
            else:
                pair[j] = inner
                inner += 1
        weight[nxt] = weight[pair[0]] + weight[pair[1]]
        parent[pair[0]] = nxt
        parent[pair[1]] = nxt
        nxt += 1
    depth = np.zeros(2 * m - 1, np.int64)
    for node in range(2 * m - 3, -1, -1):
        depth[node] = depth[parent[node]] + 1
    count = np.zeros(64, np.int64)
    for i in range(m):
        count[min(depth[i], max_bits)] += 1
    total = 0
    for b in range(1, max_bits + 1):
        total += count[b] << (max_bits - b)
    while total > (1 << max_bits):  # clamped leaves oversubscribe: lengthen a shorter code
        count[max_bits] -= 1
        for b in range(max_bits - 1, 0, -1):
            if count[b]:
                count[b] -= 1
                count[b + 1] += 2
                break
        total -= 1
    i = 0
    for b in range(max_bits, 0, -1):  # the rarest symbols get the longest codes
        for _ in range(count[b]):
            out[order[i]] = b
            i += 1


@numba.njit(cache=True, nogil=True)
def _canonical(lengths, codes):  # pragma: no cover - compiled
    """Canonical codes of ``lengths``, bit-reversed (deflate packs Huffman codes MSB first into
    an LSB-first bit stream)."""
    count = np.zeros(16, np.int64)
    for s in range(lengths.shape[0]):
        count[lengths[s]] += 1
    count[0] = 0
    nxt = np.zeros(16, np.int64)
    code = 0
    for b in range(1, 16):
        code = (code + count[b - 1]) << 1
        nxt[b] = code
    for s in range(lengths.shape[0]):
        b = lengths[s]
        if b:
            c = nxt[b]
            nxt[b] += 1
            r = 0
            for _ in range(b):
                r = (r << 1) | (c & 1)
                c >>= 1
            codes[s] = r


def _loader(bits: int):
    @intrinsic
    def load(typingctx, arr, idx):
        """``bits`` little-endian bits at byte ``idx`` of a uint8 array, unaligned, as int64."""
        def codegen(context, builder, sig, args):
            ary = context.make_array(sig.args[0])(context, builder, args[0])
            ptr = builder.bitcast(builder.gep(ary.data, [args[1]]), ir.IntType(bits).as_pointer())
            v = builder.load(ptr, align=1)
            return builder.zext(v, ir.IntType(64)) if bits < 64 else v
        return types.int64(arr, types.int64), codegen
    return load


_load64 = _loader(64)


@intrinsic
def _store64(typingctx, arr, idx, val):
    """Store the int64 ``val`` little-endian at byte ``idx`` of a uint8 array, unaligned."""
    def codegen(context, builder, sig, args):
        ary = context.make_array(sig.args[0])(context, builder, args[0])
        ptr = builder.bitcast(builder.gep(ary.data, [args[1]]), ir.IntType(64).as_pointer())
        builder.store(args[2], ptr, align=1)
        return context.get_dummy_value()
    return types.void(arr, types.int64, types.int64), codegen


@intrinsic
def _ctz(typingctx, v):
    """Trailing zero bits of a non-zero int64."""
    def codegen(context, builder, sig, args):
        return builder.cttz(args[0], ir.Constant(ir.IntType(1), 1))
    return types.int64(types.int64), codegen


@numba.njit(cache=True, nogil=True)
def _block(src, blk_start, blk_end, sym, nsym, freq_ll, freq_d, extra_bits, final, out, pos, bitbuf, bitcnt,
           tables):  # pragma: no cover - compiled
    """Write one block (dynamic Huffman, or stored where that is smaller); return the bit
    writer's state (``pos``, pending bits, their count, always < 8)."""
    _LEN_CODE, _LEN_EXTRA, _LEN_BASE, _DIST_CODE, _DIST_EXTRA, _DIST_BASE, _CL_ORDER = tables
    len_ll = np.zeros(286, np.int64)
    len_d = np.zeros(30, np.int64)
    _code_lengths(freq_ll, 15, len_ll)
    _code_lengths(freq_d, 15, len_d)
    hlit = 286
    while hlit > 257 and len_ll[hlit - 1] == 0:
        hlit -= 1
    hdist = 30
    while hdist > 1 and len_d[hdist - 1] == 0:
        hdist -= 1
    # run-length code of the code lengths (they run on from the literal/length code into the distance code)
    total = hlit + hdist
    seq = np.empty(total, np.int64)
    seq[:hlit] = len_ll[:hlit]
    seq[hlit:] = len_d[:hdist]
    cl_sym = np.empty(total, np.int64)
    cl_val = np.zeros(total, np.int64)
    ncl = 0
    i = 0
    while i < total:
        cur = seq[i]
        run = 1
        while i + run < total and seq[i + run] == cur:
            run += 1
        i += run
        if cur == 0:
            while run >= 11:
                r = min(run, 138)
                cl_sym[ncl], cl_val[ncl] = 18, r - 11
                ncl += 1
                run -= r
            if run >= 3:
                cl_sym[ncl], cl_val[ncl] = 17, run - 3
                ncl += 1
                run = 0
        else:
            cl_sym[ncl] = cur
            ncl += 1
            run -= 1
            while run >= 3:
                r = min(run, 6)
                cl_sym[ncl], cl_val[ncl] = 16, r - 3
                ncl += 1
                run -= r
        for _ in range(run):
            cl_sym[ncl] = cur
            ncl += 1
    cl_freq = np.zeros(19, np.int64)
    for k in range(ncl):
        cl_freq[cl_sym[k]] += 1
    len_cl = np.zeros(19, np.int64)
    _code_lengths(cl_freq, 7, len_cl)
    hclen = 19
    while hclen > 4 and len_cl[_CL_ORDER[hclen - 1]] == 0:
        hclen -= 1
    # size of the dynamic block in bits, against storing the bytes
    dyn = 17 + 3 * hclen + extra_bits
    for k in range(ncl):
        s = cl_sym[k]
        dyn += len_cl[s] + (2 if s == 16 else 3 if s == 17 else 7 if s == 18 else 0)
    for s in range(286):
        dyn += freq_ll[s] * len_ll[s]
    for s in range(30):
        dyn += freq_d[s] * len_d[s]
    n_bytes = blk_end - blk_start
    stored = 8 * (n_bytes + 5 * ((n_bytes + 65534) // 65535 if n_bytes else 1)) + 10
    if stored < dyn:
        start = blk_start
        while True:
            chunk = min(blk_end - start, 65535)
            last = final and start + chunk >= blk_end
            bitbuf |= (1 if last else 0) << bitcnt  # BFINAL, BTYPE 00
            bitcnt += 3
            _store64(out, pos, bitbuf)
            pos += (bitcnt + 7) >> 3  # then align to a byte
            bitbuf, bitcnt = 0, 0
            out[pos] = chunk & 0xFF
            out[pos + 1] = chunk >> 8
            out[pos + 2] = (chunk ^ 0xFFFF) & 0xFF
            out[pos + 3] = (chunk ^ 0xFFFF) >> 8
            pos += 4
            out[pos:pos + chunk] = src[start:start + chunk]
            pos += chunk
            start += chunk
            if start >= blk_end:
                break
        return pos, bitbuf, bitcnt
    code_ll = np.zeros(286, np.int64)
    code_d = np.zeros(30, np.int64)
    code_cl = np.zeros(19, np.int64)
    _canonical(len_ll, code_ll)
    _canonical(len_d, code_d)
    _canonical(len_cl, code_cl)
    bitbuf |= ((1 if final else 0) | (2 << 1) | ((hlit - 257) << 3) | ((hdist - 1) << 8) | ((hclen - 4) << 13)) \
        << bitcnt
    bitcnt += 17
    for k in range(hclen):
        _store64(out, pos, bitbuf)
        pos += bitcnt >> 3
        bitbuf >>= bitcnt & 56
        bitcnt &= 7
        bitbuf |= len_cl[_CL_ORDER[k]] << bitcnt
        bitcnt += 3
    for k in range(ncl):
        _store64(out, pos, bitbuf)
        pos += bitcnt >> 3
        bitbuf >>= bitcnt & 56
        bitcnt &= 7
        s = cl_sym[k]
        nb = 2 if s == 16 else 3 if s == 17 else 7 if s == 18 else 0
        bitbuf |= (code_cl[s] | (cl_val[k] << len_cl[s])) << bitcnt
        bitcnt += len_cl[s] + nb
    # per match length: its code and extra bits as one value, and their bit count
    lcode = np.zeros(_MAX_MATCH + 1, np.int64)
    lbits = np.zeros(_MAX_MATCH + 1, np.int64)
    for m in range(3, _MAX_MATCH + 1):
        c = _LEN_CODE[m]
        lcode[m] = code_ll[257 + c] | ((m - _LEN_BASE[c]) << len_ll[257 + c])
        lbits[m] = len_ll[257 + c] + _LEN_EXTRA[c]
    for k in range(nsym):
        _store64(out, pos, bitbuf)
        pos += bitcnt >> 3
        bitbuf >>= bitcnt & 56
        bitcnt &= 7
        v = np.int64(sym[k])
        if v < 256:
            bitbuf |= code_ll[v] << bitcnt
            bitcnt += len_ll[v]
        else:
            m = v & 511
            d = v >> 9
            dc = _DIST_CODE[d]
            bitbuf |= (lcode[m] | ((code_d[dc] | ((d - _DIST_BASE[dc]) << len_d[dc])) << lbits[m])) << bitcnt
            bitcnt += lbits[m] + len_d[dc] + _DIST_EXTRA[dc]
    _store64(out, pos, bitbuf)
    pos += bitcnt >> 3
    bitbuf >>= bitcnt & 56
    bitcnt &= 7
    bitbuf |= code_ll[256] << bitcnt
    bitcnt += len_ll[256]
    _store64(out, pos, bitbuf)
    pos += bitcnt >> 3
    bitbuf >>= bitcnt & 56
    bitcnt &= 7
    return pos, bitbuf, bitcnt


#: Adler-32 runs: over L bytes x_j, a gains sum(x_j) and b gains L * a + sum((L - j) * x_j).
_ADLER_RUN = 4096
_ADLER_WEIGHTS = np.arange(_ADLER_RUN, 0, -1).astype(np.int32)


@numba.njit(cache=True, nogil=True)
def _adler32(src):  # pragma: no cover - compiled
    """Adler-32 of ``src`` as (a, b), in runs of 4096 bytes whose two sums (plain and weighted by
    the bytes that follow) the compiler vectorizes."""
    n = src.shape[0]
    a, b = 1, 0
    i = 0
    while i + _ADLER_RUN <= n:
        plain, weighted = 0, 0
        for j in range(_ADLER_RUN):
            x = np.int64(src[i + j])
            plain += x
            weighted += _ADLER_WEIGHTS[j] * x
        b = (b + _ADLER_RUN * a + weighted) % 65521
        a = (a + plain) % 65521
        i += _ADLER_RUN
    while i < n:
        a += src[i]
        b += a
        i += 1
    return a % 65521, b % 65521


@numba.njit(cache=True, nogil=True)
def _deflate(src, out, tables):  # pragma: no cover - compiled
    _LEN_CODE, _LEN_EXTRA, _LEN_BASE, _DIST_CODE, _DIST_EXTRA, _DIST_BASE, _CL_ORDER = tables
    n = src.shape[0]
    out[0] = 0x78  # deflate, 32 KiB window
    out[1] = 0x01  # fastest compression, no dictionary (0x7801 % 31 == 0)
    pos = 2
    bitbuf = 0
    bitcnt = 0
    table = np.full(1 << _HASH_BITS, -_WINDOW - 1, np.int32)  # last position of each hash
    sym = np.empty(BLOCK_SYMBOLS, np.int32)  # literal byte, or distance << 9 | length
    freq_ll = np.zeros(286, np.int64)
    freq_d = np.zeros(30, np.int64)
    limit = n - _MIN_MATCH  # positions with eight bytes to hash
    p = 0
    while True:
        blk_start = p
        freq_ll[:] = 0
        freq_d[:] = 0
        extra = 0
        nsym = 0
        while p <= limit and nsym < BLOCK_SYMBOLS:
            v = _load64(src, p)
            h = ((v * _HASH_MUL) >> (64 - _HASH_BITS)) & ((1 << _HASH_BITS) - 1)
            cand = np.int64(table[h])
            table[h] = p
            if p - cand <= _WINDOW and _load64(src, cand) == v:
                m = _MIN_MATCH
                mx = min(_MAX_MATCH, n - p)
                while True:  # extend eight bytes at a time
                    if m + 8 > mx:
                        while m < mx and src[cand + m] == src[p + m]:
                            m += 1
                        break
                    x = _load64(src, p + m) ^ _load64(src, cand + m)
                    if x:
                        m += _ctz(x) >> 3
                        break
                    m += 8
                dist = p - cand
                sym[nsym] = (dist << 9) | m
                c = _LEN_CODE[m]
                freq_ll[257 + c] += 1
                dc = _DIST_CODE[dist]
                freq_d[dc] += 1
                extra += _LEN_EXTRA[c] + _DIST_EXTRA[dc]
                p += m
            else:
                b = src[p]
                sym[nsym] = b
                freq_ll[b] += 1
                p += 1
            nsym += 1
        if p > limit:
            while p < n and nsym < BLOCK_SYMBOLS:
                b = src[p]
                sym[nsym] = b
                freq_ll[b] += 1
                p += 1
                nsym += 1
        freq_ll[256] += 1  # end of block
        final = p >= n
        pos, bitbuf, bitcnt = _block(src, blk_start, p, sym, nsym, freq_ll, freq_d, extra, final, out, pos, bitbuf,
                                     bitcnt, tables)
        if final:
            break
    if bitcnt:
        out[pos] = bitbuf & 0xFF
        pos += 1
    a, b = _adler32(src)
    out[pos] = (b >> 8) & 0xFF
    out[pos + 1] = b & 0xFF
    out[pos + 2] = (a >> 8) & 0xFF
    out[pos + 3] = a & 0xFF
    return pos + 4


@numba.njit(cache=True, inline="always")
def _put_varint(buf, pos, v):  # pragma: no cover - compiled
    while v >= 128:
        buf[pos] = (v & 0x7F) | 0x80
        v >>= 7
        pos += 1
    buf[pos] = v
    return pos + 1


@numba.njit(cache=True, nogil=True)
def _bundles(src, cuts, out, tables):  # pragma: no cover - compiled
    """For each piece ``src[cuts[k]:cuts[k + 1]]``, a framed ``TracePacket{compressed_packets}``
    holding its zlib stream, one after another in ``out``; returns the bytes written."""
    longest = 0
    for k in range(cuts.shape[0] - 1):
        longest = max(longest, cuts[k + 1] - cuts[k])
    scratch = np.empty(longest + (longest >> 8) + 1024, np.uint8)
    pos = 0
    for k in range(cuts.shape[0] - 1):
        m = _deflate(src[cuts[k]:cuts[k + 1]], scratch, tables)
        body = 2 + _varint_len(m) + m  # field tag, length, stream
        out[pos] = 0x0A
        pos = _put_varint(out, pos + 1, body)
        out[pos] = 0x92  # field 50, length-delimited
        out[pos + 1] = 0x03
        pos = _put_varint(out, pos + 2, m)
        out[pos:pos + m] = scratch[:m]
        pos += m
    return pos


@numba.njit(cache=True, inline="always")
def _varint_len(v):  # pragma: no cover - compiled
    n = 1
    while v >= 128:
        v >>= 7
        n += 1
    return n


def bundle_bound(n: int, pieces: int) -> int:
    """Bytes :func:`_bundles` may write for ``n`` bytes in ``pieces`` pieces."""
    return n + (n >> 8) + 1100 * max(pieces, 1)


def _writable(data: bytes | bytearray | memoryview | np.ndarray) -> np.ndarray:
    """``data`` as a writable contiguous uint8 array (a copy only where needed): the compiled
    functions are built for one array type (each other type would compile them again)."""
    src = data if isinstance(data, np.ndarray) else np.frombuffer(data, np.uint8)
    src = np.ascontiguousarray(src.view(np.uint8).ravel())
    return src if src.flags.writeable else src.copy()


def bundles(src: bytes | np.ndarray, cuts: np.ndarray) -> np.ndarray:
    """Framed ``compressed_packets`` packets of ``src`` cut at ``cuts`` (from 0 to ``len(src)``)."""
    src = _writable(src)
    out = np.empty(bundle_bound(src.shape[0], cuts.shape[0]), np.uint8)
    return out[:_bundles(src, np.ascontiguousarray(cuts, np.int64), out, TABLES)]


def compress(data: bytes | bytearray | memoryview | np.ndarray) -> bytes:
    """A zlib stream of ``data`` that ``zlib.decompress`` (and Perfetto) inflates back."""
    src = _writable(data)
    n = src.shape[0]
    out = np.empty(n + (n >> 8) + 1024, np.uint8)  # stored blocks bound the size; slack for 8-byte stores
    size = _deflate(src, out, TABLES)
    return out[:size].tobytes()
