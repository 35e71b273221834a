#!/usr/bin/env python3
"""Writes collector/src/api/openapi.json from the HTTP API table in
docs/collector.md (the reference): one operation per `METHOD /path?query`
row, its query parameters, and the row's text as the description. Run it
after changing that table; `cargo test -p sonde-collector` checks that the
description and the router list the same routes."""
import json, re, pathlib

root = pathlib.Path(__file__).resolve().parent.parent
text = (root / "docs/collector.md").read_text()
rows = [l for l in text.splitlines() if re.match(r"^\| `(GET|POST|PUT|DELETE)", l)]
paths = {}


def add(method, path, params, desc):
    op = {
        "summary": desc.split(". ")[0][:120].replace("`", ""),
        "description": desc,
        "parameters": [],
        "responses": {
            "200": {"description": "OK (JSON unless stated)"},
            "400": {"description": "A bad parameter: {\"error\"} naming it"},
            "401": {"description": "A token or console session is required"},
        },
    }
    for name in re.findall(r"\{(\w+)\}", path):
        op["parameters"].append({"name": name, "in": "path", "required": True, "schema": {"type": "string"}})
    for q in params:
        q = q.split("=")[0]
        if q:
            op["parameters"].append({"name": q, "in": "query", "required": False, "schema": {"type": "string"}})
    if method in ("post", "put"):
        op["requestBody"] = {"required": False, "content": {"application/json": {"schema": {"type": "object"}}}}
    if not op["parameters"]:
        del op["parameters"]
    paths.setdefault(path, {})[method] = op


for l in rows:
    cells = l.split(" | ")
    head = cells[0].lstrip("| ")
    desc = " | ".join(cells[1:]).rstrip(" |")
    for part in re.findall(r"`((?:GET|POST|PUT|DELETE)(?:/(?:GET|POST|PUT|DELETE))* [^`]+)`", head):
        methods, rest = part.split(" ", 1)
        path, _, query = rest.partition("?")
        for m in methods.split("/"):
            add(m.lower(), path.strip(), query.split("&") if query else [], desc)
    m2 = re.search(r"`(PUT)`/`(DELETE) ([^`]+)`", head)
    if m2:
        add("put", m2.group(3), [], desc)

paths["/metrics"] = {"get": {"summary": "The collector's own metrics, Prometheus text format",
                             "responses": {"200": {"description": "text/plain; version=0.0.4"}}}}
paths["/healthz"] = {"get": {"summary": "Liveness: `ok`", "security": [],
                             "responses": {"200": {"description": "text: ok"}}}}
paths["/api/v1/openapi.json"] = {"get": {"summary": "This description (OpenAPI 3.1)",
                                         "responses": {"200": {"description": "OK"}}}}
doc = {
    "openapi": "3.1.0",
    "info": {
        "title": "Sonde collector API",
        "version": "1",
        "description": "The JSON API behind the Sonde console (docs/collector.md is the reference; "
        "this description is checked against the router by a test). Times are epoch milliseconds; "
        "`from`/`to` are inclusive.",
    },
    "servers": [{"url": "/"}],
    "components": {"securitySchemes": {"bearer": {
        "type": "http", "scheme": "bearer",
        "description": "An `auth.api_tokens` token (or a console session cookie). Without api_tokens the API is open."}}},
    "security": [{"bearer": []}],
    "paths": dict(sorted(paths.items())),
}
out = root / "collector/src/api/openapi.json"
out.write_text(json.dumps(doc, indent=1, ensure_ascii=False) + "\n")
print(f"{out}: {len(paths)} paths")
