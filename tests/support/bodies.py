"""Request bodies that cost a JSON parser much for their size."""

DEEP = b'{"a":' * 100_000 + b"1" + b"}" * 100_000  # 600 KB: Python's parser hits RecursionError

# Bodies just under max_request_size (6,553,500 bytes), each refused: shapes Python's JSON parser
# would turn into millions of objects, and the largest JSON our parser does read (one string).
BODY_BYTES = 6_500_000
WORST_JSON = {
    "a list of 1.6 million empty objects": b"[" + b"{}," * (BODY_BYTES // 3) + b"{}]",
    "a list of 3.2 million numbers": b"[" + b"1," * (BODY_BYTES // 2) + b"1]",
    "an object of 500,000 keys": b"{" + b",".join(b'"k%06d":0' % i for i in range(500_000)) + b"}",
    "one 6.5 MB base64 string": b'{"image": "' + b"A" * (BODY_BYTES - 16) + b'"}',
}
