-- wrk script: POST a small JSON body, as a model client would.
-- Usage: wrk -t1 -c32 -d5s -s benchmarks/post_json.lua http://127.0.0.1:PORT/
wrk.method = "POST"
wrk.body = '{"x": 1}'
wrk.headers["Content-Type"] = "application/json"
