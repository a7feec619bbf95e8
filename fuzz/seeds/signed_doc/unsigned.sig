outpost-release-v1
app=hello
version=1.0.0
digest=sha256:e908bd3424ed493ce240224622865c7c3a079e9d140eb93c4e618e94eee1e2fd
size=175
created=1700000000
expires=1800000000
tenant=
