//! The OpenAPI 3.1 document served at `/v1/openapi.json`, and an offline docs page that renders
//! it (no CDN: the page is plain HTML and a few lines of script).

use serde_json::{Value, json};

fn problem_responses(codes: &[u16]) -> Value {
    let mut m = serde_json::Map::new();
    for c in codes {
        m.insert(
            c.to_string(),
            json!({"description": "error", "content": {"application/problem+json": {"schema": {"$ref": "#/components/schemas/Problem"}}}}),
        );
    }
    Value::Object(m)
}

fn with_errors(mut ok: Value, codes: &[u16]) -> Value {
    if let (Some(o), Value::Object(errs)) = (ok.as_object_mut(), problem_responses(codes)) {
        o.extend(errs);
    }
    ok
}

fn json_ok(status: &str, description: &str, schema: Value) -> Value {
    json!({ status: {"description": description, "content": {"application/json": {"schema": schema}}}})
}

fn r(name: &str) -> Value {
    json!({"$ref": format!("#/components/schemas/{name}")})
}

fn page_of(name: &str) -> Value {
    json!({"type": "object", "required": ["data"], "properties": {
        "data": {"type": "array", "items": r(name)},
        "next_cursor": {"type": "string", "description": "pass back as ?cursor= for the next page"}}})
}

fn param(name: &str, location: &str, description: &str, schema: Value) -> Value {
    json!({"name": name, "in": location, "required": location == "path", "description": description, "schema": schema})
}

/// The document: the hand-written paths below, then from the route table ([`crate::routes`])
/// every authenticated operation gets the bearer `security`, its `x-permission` and the 401/403
/// answers, so the document cannot disagree with what the router enforces.
pub fn document() -> Value {
    let mut doc = paths_and_schemas();
    add_audit(&mut doc);
    add_billing(&mut doc);
    crate::members::add_openapi(&mut doc);
    for route in crate::routes() {
        let Some(permission) = route.permission else {
            continue;
        };
        let method = route.method.as_str().to_ascii_lowercase();
        if let Some(op) = doc
            .pointer_mut(&format!(
                "/paths/{}/{method}",
                route.path.replace('/', "~1")
            ))
            .and_then(Value::as_object_mut)
        {
            op.insert("security".to_owned(), json!([{"bearer": []}]));
            op.insert("x-permission".to_owned(), json!(permission.as_str()));
            if permission.acts_for_end_user() {
                let header = param(
                    "Paddock-End-User",
                    "header",
                    "act for one of the workspace's end-users (`eu_…` or its external id; API keys only): the request sees and creates only that end-user's runs, approvals, secrets and usage. 400 `unknown_end_user` if the workspace has none such",
                    json!({"type": "string", "maxLength": 200}),
                );
                match op.get_mut("parameters").and_then(Value::as_array_mut) {
                    Some(params) => params.push(header),
                    None => {
                        op.insert("parameters".to_owned(), json!([header]));
                    }
                }
            }
            if route.idempotent {
                let key = param(
                    "Idempotency-Key",
                    "header",
                    "1-255 printable ASCII characters, kept 24 h per workspace: a retry with the same key and request gets the stored response again (with `Idempotent-Replayed: true`) instead of acting twice; the same key with another request is 422 `idempotency_key_mismatch`, while the first is still running 409 `idempotency_key_in_flight`",
                    json!({"type": "string", "minLength": 1, "maxLength": 255}),
                );
                match op.get_mut("parameters").and_then(Value::as_array_mut) {
                    Some(params) => params.push(key),
                    None => {
                        op.insert("parameters".to_owned(), json!([key]));
                    }
                }
                if let (Some(Value::Object(responses)), Value::Object(errs)) =
                    (op.get_mut("responses"), problem_responses(&[409, 422]))
                {
                    for (code, v) in errs {
                        responses.entry(code).or_insert(v);
                    }
                }
            }
            if let (Some(Value::Object(responses)), Value::Object(errs)) =
                (op.get_mut("responses"), problem_responses(&[401, 403, 429]))
            {
                responses.extend(errs);
            }
        }
    }
    doc
}

fn paths_and_schemas() -> Value {
    let run_id = param("id", "path", "run id (`run_…`)", json!({"type": "string"}));
    let wait = param(
        "wait",
        "query",
        "block up to this many seconds (max 60) until the run is terminal; a waiting request holds one of the caller's and the workspace's stream slots (429 `too_many_streams` when none is free)",
        json!({"type": "integer", "minimum": 0}),
    );
    json!({
        "openapi": "3.1.0",
        "info": {"title": "Paddock API", "version": env!("CARGO_PKG_VERSION"),
                 "description": "Durable, governed agent runs. Errors are RFC 9457 problem+json with a stable `code`."},
        "paths": {
            "/healthz": {"get": {"summary": "Liveness (public)", "responses": json_ok("200", "ok", json!({"type": "object"}))}},
            "/docs": {"get": {"summary": "This API as a readable page (public)", "responses": {"200": {"description": "HTML", "content": {"text/html": {"schema": {"type": "string"}}}}}}},
            "/v1/openapi.json": {"get": {"summary": "This document (public)", "responses": json_ok("200", "OpenAPI 3.1", json!({"type": "object"}))}},
            "/v1/keys": {
                "get": {"summary": "List the workspace's API keys (never their secrets)",
                    "responses": json_ok("200", "keys", json!({"type": "object", "properties": {"data": {"type": "array", "items": r("ApiKeyInfo")}}}))},
                "post": {"summary": "Create an API key; its secret is in this answer only. The role may not be above the caller's; `workspace` (another workspace of the org) is for owner keys",
                    "requestBody": {"required": true, "content": {"application/json": {"schema": r("CreateKey")}}},
                    "responses": with_errors(json_ok("201", "the key and its secret (shown once)", r("CreatedKey")), &[400, 404, 415, 422])}},
            "/v1/keys/{id}": {"delete": {"summary": "Revoke an API key (effective at once)",
                "parameters": [param("id", "path", "key id (`key_…`)", json!({"type": "string"}))],
                "responses": with_errors(json!({"204": {"description": "revoked"}}), &[404])}},
            "/v1/workspaces": {
                "get": {"summary": "List the workspaces of the caller's org",
                    "responses": json_ok("200", "workspaces", json!({"type": "object", "properties": {"data": {"type": "array", "items": r("WorkspaceInfo")}}}))},
                "post": {"summary": "Create a workspace in the caller's org",
                    "requestBody": {"required": true, "content": {"application/json": {"schema": {"type": "object", "required": ["name"], "additionalProperties": false, "properties": {"name": {"type": "string"}}}}}},
                    "responses": with_errors(json_ok("201", "the workspace", r("WorkspaceInfo")), &[400, 409, 415, 422])}},
            "/v1/runs": {
                "post": {"summary": "Start a run", "parameters": [wait],
                    "requestBody": {"required": true, "content": {"application/json": {"schema": r("CreateRun")}}},
                    "responses": with_errors(json_ok("201", "the run", r("Run")), &[400, 404, 413, 415, 422])},
                "get": {"summary": "List runs (newest first)", "parameters": [
                    param("agent", "query", "only runs of this agent", json!({"type": "string"})),
                    param("status", "query", "only runs in this status", r("RunStatus")),
                    param("cursor", "query", "from a previous page's next_cursor", json!({"type": "string"})),
                    param("limit", "query", "page size (1-200, default 50)", json!({"type": "integer"}))],
                    "responses": with_errors(json_ok("200", "a page of runs", page_of("Run")), &[400])}
            },
            "/v1/runs/{id}": {"get": {"summary": "Get a run", "parameters": [run_id, wait],
                "responses": with_errors(json_ok("200", "the run", r("Run")), &[400, 404])}},
            "/v1/runs/{id}/cancel": {"post": {"summary": "Cancel a run in any non-terminal state", "parameters": [run_id],
                "requestBody": {"required": false, "content": {"application/json": {"schema": {"type": "object", "properties": {"reason": {"type": "string"}}}}}},
                "responses": with_errors(json_ok("200", "the cancelled run", r("Run")), &[404, 409])}},
            "/v1/runs/{id}/events": {"get": {"summary": "The run's journal: SSE (event id = seq; send Last-Event-ID to resume) or a JSON page with Accept: application/json or ?after=. An open SSE stream holds one of the caller's and the workspace's stream slots (429 `too_many_streams` with Retry-After when none is free)",
                "parameters": [run_id,
                    param("after", "query", "only events with a larger seq", json!({"type": "integer"})),
                    param("limit", "query", "JSON page size (1-1000, default 500)", json!({"type": "integer"})),
                    param("Last-Event-ID", "header", "resume the SSE stream after this seq", json!({"type": "integer"}))],
                "responses": with_errors(json!({"200": {"description": "events", "content": {
                    "text/event-stream": {"schema": {"type": "string"}},
                    "application/json": {"schema": page_of("Event")}}}}), &[400, 404])}},
            "/v1/runs/{id}/approvals/{approval_id}": {
                "get": {"summary": "Get an approval", "parameters": [run_id, param("approval_id", "path", "approval id (`apr_…`)", json!({"type": "string"}))],
                    "responses": with_errors(json_ok("200", "the approval", r("Approval")), &[404])},
                "post": {"summary": "Approve or deny a pending tool call", "parameters": [run_id, param("approval_id", "path", "approval id (`apr_…`)", json!({"type": "string"}))],
                    "requestBody": {"required": true, "content": {"application/json": {"schema": r("DecideApproval")}}},
                    "responses": with_errors(json_ok("200", "the run, queued again", r("Run")), &[400, 404, 409, 422])}},
            "/v1/approvals": {"get": {"summary": "List approvals (oldest first)", "parameters": [
                    param("status", "query", "pending, approved or denied", json!({"type": "string", "enum": ["pending", "approved", "denied"]})),
                    param("cursor", "query", "from a previous page", json!({"type": "string"})),
                    param("limit", "query", "page size (1-200)", json!({"type": "integer"}))],
                "responses": with_errors(json_ok("200", "a page of approvals", page_of("Approval")), &[400])}},
            "/v1/agents": {"get": {"summary": "List agents (latest version of each)",
                "responses": json_ok("200", "agents", json!({"type": "object", "properties": {"data": {"type": "array", "items": r("AgentDefinition")}}}))}},
            "/v1/agents/{name}": {
                "get": {"summary": "Get an agent's latest version", "parameters": [param("name", "path", "agent name", json!({"type": "string"}))],
                    "responses": with_errors(json_ok("200", "the agent", r("AgentDefinition")), &[404])},
                "put": {"summary": "Register an agent version (versions are immutable: change content → bump version)",
                    "parameters": [param("name", "path", "agent name", json!({"type": "string"}))],
                    "requestBody": {"required": true, "content": {"application/json": {"schema": r("AgentDefinition")}}},
                    "responses": with_errors(json_ok("200", "the registered agent", r("AgentDefinition")), &[400, 409, 413, 422])}},
            "/v1/secrets": {"get": {"summary": "List secrets (names and times; values are never returned)",
                "responses": json_ok("200", "secrets", json!({"type": "object", "properties": {"data": {"type": "array", "items": r("SecretInfo")}}}))}},
            "/v1/secrets/{name}": {
                "put": {"summary": "Create or replace a secret (write-only: the value can never be read back over the API)",
                    "parameters": [param("name", "path", "secret name: a letter, then letters, digits, '_', '-' or '.'", json!({"type": "string"}))],
                    "requestBody": {"required": true, "content": {"application/json": {"schema": {"type": "object", "required": ["value"], "additionalProperties": false, "properties": {"value": {"type": "string", "maxLength": 65536}}}}}},
                    "responses": with_errors(json!({"200": {"description": "replaced", "content": {"application/json": {"schema": r("SecretInfo")}}},
                                                    "201": {"description": "created", "content": {"application/json": {"schema": r("SecretInfo")}}}}), &[400, 413, 415, 422])},
                "delete": {"summary": "Delete a secret", "parameters": [param("name", "path", "secret name", json!({"type": "string"}))],
                    "responses": with_errors(json!({"204": {"description": "deleted"}}), &[404])}},
            "/v1/vault/rotate": {"post": {"summary": "Rotate the master key while serving: every data key is rewrapped in one transaction (owner only; refused when the key comes from PADDOCK_MASTER_KEY)",
                "responses": with_errors(json_ok("200", "the rotation", json!({"type": "object", "properties": {
                    "old_master_key_id": {"type": "string"}, "new_master_key_id": {"type": "string"},
                    "workspaces": {"type": "integer"}, "data_keys": {"type": "integer"}}})), &[409])}}
        },
        "components": {
          "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer", "bearerFormat": "pdk_…",
              "description": "An API key. The first `paddock serve` prints an owner key (or takes PADDOCK_ADMIN_KEY); create more with POST /v1/keys."}},
          "schemas": {
            "Role": {"type": "string", "enum": ["viewer", "operator", "developer", "admin", "owner"]},
            "CreateKey": {"type": "object", "required": ["name", "role"], "additionalProperties": false, "properties": {
                "name": {"type": "string"}, "role": r("Role"), "expires_in_secs": {"type": "integer", "minimum": 1},
                "workspace": {"type": "string", "description": "another workspace of the org (owner keys only)"}}},
            "ApiKeyInfo": {"type": "object", "required": ["id", "name", "role", "workspace", "prefix", "created_at"], "properties": {
                "id": {"type": "string"}, "name": {"type": "string"}, "role": r("Role"), "workspace": {"type": "string"},
                "prefix": {"type": "string", "description": "the secret's first characters"},
                "created_at": {"type": "string", "format": "date-time"}, "expires_at": {"type": ["string", "null"], "format": "date-time"},
                "revoked_at": {"type": ["string", "null"], "format": "date-time"}, "last_used_at": {"type": ["string", "null"], "format": "date-time"}}},
            "CreatedKey": {"type": "object", "required": ["key", "secret"], "properties": {"key": r("ApiKeyInfo"),
                "secret": {"type": "string", "description": "`pdk_…`: shown once, stored only hashed"}}},
            "WorkspaceInfo": {"type": "object", "required": ["id", "name", "created_at"], "properties": {
                "id": {"type": "string"}, "name": {"type": "string"}, "created_at": {"type": "string", "format": "date-time"}}},
            "SecretInfo": {"type": "object", "required": ["name", "created_at", "updated_at"], "properties": {
                "name": {"type": "string"}, "created_at": {"type": "string", "format": "date-time"}, "updated_at": {"type": "string", "format": "date-time"}}},
            "Problem": {"type": "object", "required": ["type", "title", "status", "code", "detail"], "properties": {
                "type": {"type": "string"}, "title": {"type": "string"}, "status": {"type": "integer"},
                "code": {"type": "string", "description": "stable machine-readable error code"}, "detail": {"type": "string"}}},
            "RunStatus": {"type": "string", "enum": ["queued", "running", "waiting", "succeeded", "failed", "cancelled", "timed_out"]},
            "ErrorCode": {"type": "string", "enum": ["model_error", "tool_error", "policy_denied", "budget_exceeded", "limit_exceeded",
                "output_invalid", "tool_outcome_unknown", "sandbox_error", "agent_error", "cancelled", "internal"]},
            "CreateRun": {"type": "object", "required": ["agent"], "additionalProperties": false, "properties": {
                "agent": {"type": "string"}, "input": {"description": "checked against the agent's input schema"},
                "metadata": {"type": "object"}}},
            "Run": {"type": "object", "required": ["id", "agent", "agent_version", "status", "sandbox", "input", "usage", "last_seq", "created_at", "updated_at"], "properties": {
                "id": {"type": "string"}, "agent": {"type": "string"}, "agent_version": {"type": "string"},
                "status": r("RunStatus"), "sandbox": {"type": "string", "description": "sandbox tier of the run's tools: process, or none (no isolation)"}, "input": {}, "output": {}, "metadata": {"type": "object"},
                "error": {"type": "object", "properties": {"code": r("ErrorCode"), "message": {"type": "string"}}},
                "usage": {"type": "object", "properties": {"input_tokens": {"type": "integer"}, "output_tokens": {"type": "integer"},
                    "cost_usd": {"type": "number"}, "model_calls": {"type": "integer"}, "model_retries": {"type": "integer"}, "tool_calls": {"type": "integer"}}},
                "last_seq": {"type": "integer"}, "created_at": {"type": "string", "format": "date-time"}, "updated_at": {"type": "string", "format": "date-time"}}},
            "Event": {"type": "object", "required": ["seq", "at", "type"], "properties": {
                "seq": {"type": "integer"}, "at": {"type": "string", "format": "date-time"},
                "type": {"type": "string", "enum": ["run_created", "run_started", "model_requested", "model_responded", "policy_decided",
                    "approval_requested", "approval_decided", "tool_call_started", "tool_call_completed", "output_validated",
                    "egress_started", "egress_request", "egress_omitted", "run_waiting", "run_succeeded", "run_failed", "run_timed_out", "run_cancelled"]}},
                "additionalProperties": true},
            "Approval": {"type": "object", "properties": {"id": {"type": "string"}, "run_id": {"type": "string"}, "agent": {"type": "string"},
                "call": {"type": "object", "properties": {"id": {"type": "string"}, "name": {"type": "string"}, "arguments": {}}},
                "status": {"type": "string", "enum": ["pending", "approved", "denied"]}, "comment": {"type": "string"},
                "created_at": {"type": "string", "format": "date-time"}, "decided_at": {"type": "string", "format": "date-time"}}},
            "DecideApproval": {"type": "object", "required": ["decision"], "additionalProperties": false, "properties": {
                "decision": {"type": "string", "enum": ["approve", "deny"]}, "comment": {"type": "string", "maxLength": 4096}}},
            "AgentDefinition": {"type": "object", "required": ["manifest", "prompt"], "properties": {
                "manifest": {"type": "object", "description": "agent.toml as JSON: name, version, description, model, limits, tools, input_schema, output_schema"},
                "prompt": {"type": "string", "description": "minijinja template rendered with `input` into the system prompt"}}}
        }}
    })
}

pub const DOCS_HTML: &str = r#"<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Paddock API</title>
<style>body{font:15px/1.5 system-ui,sans-serif;max-width:60rem;margin:2rem auto;padding:0 1rem;color:#222}
code,pre{background:#f4f4f4;padding:.1rem .3rem;border-radius:3px}h2{margin-top:2rem;border-bottom:1px solid #ddd}
.m{display:inline-block;min-width:4rem;font-weight:bold}.get{color:#07a}.post{color:#290}.put{color:#a60}
pre{padding:.6rem;overflow:auto;font-size:13px}</style></head>
<body><h1>Paddock API</h1><p>The machine-readable document is at <a href="/v1/openapi.json">/v1/openapi.json</a>.</p>
<div id="paths">loading…</div>
<script>
fetch('/v1/openapi.json').then(r=>r.json()).then(doc=>{
  const out=document.getElementById('paths');out.textContent='';
  const esc=s=>String(s).replace(/[&<>]/g,c=>({'&':'&amp;','<':'&lt;','>':'&gt;'}[c]));
  for(const [path,ops] of Object.entries(doc.paths)){
    for(const [method,op] of Object.entries(ops)){
      const d=document.createElement('div');
      const params=(op.parameters||[]).map(p=>`<li><code>${esc(p.name)}</code> (${esc(p.in)}) ${esc(p.description||'')}</li>`).join('');
      d.innerHTML=`<h2><span class="m ${method}">${method.toUpperCase()}</span> <code>${esc(path)}</code></h2><p>${esc(op.summary||'')}</p>`+
        (params?`<ul>${params}</ul>`:'')+`<p>Responses: ${Object.keys(op.responses).map(esc).join(', ')}</p>`;
      out.appendChild(d);
    }
  }
  const s=document.createElement('div');s.innerHTML='<h2>Schemas</h2><pre>'+esc(JSON.stringify(doc.components.schemas,null,2))+'</pre>';
  out.appendChild(s);
});
</script></body></html>
"#;

/// `/v1/end-users`, `/v1/budgets` and `/v1/usage` with their schemas.
fn add_billing(doc: &mut Value) {
    let eu_id = param(
        "id",
        "path",
        "end-user id (`eu_…`)",
        json!({"type": "string"}),
    );
    let q = |name: &str, what: &str| param(name, "query", what, json!({"type": "string"}));
    let body = |name: &str| json!({"required": true, "content": {"application/json": {"schema": r(name)}}});
    let paths = json!({
        "/v1/end-users": {
            "get": {"summary": "List the workspace's end-users (oldest first)",
                "parameters": [q("cursor", "from a previous page's next_cursor"),
                    param("limit", "query", "page size (1-200, default 50)", json!({"type": "integer"}))],
                "responses": with_errors(json_ok("200", "a page of end-users", page_of("EndUser")), &[400])},
            "post": {"summary": "Create an end-user (a customer the workspace's API keys act for with `Paddock-End-User`)",
                "requestBody": body("CreateEndUser"),
                "responses": with_errors(json_ok("201", "the end-user", r("EndUser")), &[400, 409, 413, 415, 422])}},
        "/v1/end-users/{id}": {
            "get": {"summary": "One end-user", "parameters": [eu_id.clone()],
                "responses": with_errors(json_ok("200", "the end-user", r("EndUser")), &[404])},
            "delete": {"summary": "Delete an end-user (its runs and secrets stay; keys can no longer act for it)",
                "parameters": [eu_id],
                "responses": with_errors(json!({"204": {"description": "deleted"}}), &[404])}},
        "/v1/budgets": {
            "get": {"summary": "The workspace's cost budgets",
                "responses": json_ok("200", "budgets", json!({"type": "object", "properties": {"data": {"type": "array", "items": r("Budget")}}}))},
            "post": {"summary": "Add a hard cost cap: before each model call the engine holds the call's most expensive outcome against every budget that applies; a call that would exceed one is not made and the run fails with `budget_exceeded`",
                "requestBody": body("CreateBudget"),
                "responses": with_errors(json_ok("201", "the budget", r("Budget")), &[400, 415, 422])}},
        "/v1/budgets/{id}": {"delete": {"summary": "Remove a budget",
            "parameters": [param("id", "path", "budget id (`bud_…`)", json!({"type": "string"}))],
            "responses": with_errors(json!({"204": {"description": "removed"}}), &[404])}},
        "/v1/usage": {"get": {"summary": "Tokens, model calls and cost of completed model calls, by agent, end-user, model and UTC day",
            "parameters": [q("from", "first UTC day, YYYY-MM-DD (default: 29 days before `to`)"),
                q("to", "last UTC day, YYYY-MM-DD (default: today)"),
                q("group_by", "comma-separated subset of agent,end_user,model,day (default: all)"),
                q("scope", "`org`: every workspace of the org, grouped by workspace (owners only)")],
            "responses": with_errors(json_ok("200", "the report", r("UsageReport")), &[400])}}
    });
    let usage_row = json!({"type": "object", "required": ["input_tokens", "output_tokens", "model_calls", "cost_usd"], "properties": {
        "workspace": {"type": "string"}, "agent": {"type": "string"}, "end_user": {"type": "string"},
        "model": {"type": "string"}, "day": {"type": "string", "format": "date"},
        "input_tokens": {"type": "integer"}, "output_tokens": {"type": "integer"},
        "model_calls": {"type": "integer"}, "cost_usd": {"type": "number"}}});
    let schemas = json!({
        "EndUser": {"type": "object", "required": ["id", "external_id", "metadata", "created_at"], "properties": {
            "id": {"type": "string"}, "external_id": {"type": "string"}, "metadata": {"type": "object"},
            "created_at": {"type": "string", "format": "date-time"}}},
        "CreateEndUser": {"type": "object", "required": ["external_id"], "additionalProperties": false, "properties": {
            "external_id": {"type": "string", "minLength": 1, "maxLength": 200, "description": "your id for the customer, unique in the workspace"},
            "metadata": {"type": "object", "description": "at most 8 KiB of JSON"}}},
        "Budget": {"type": "object", "required": ["id", "subject", "period", "limit_usd", "created_at"], "properties": {
            "id": {"type": "string"}, "subject": {"type": "string", "enum": ["workspace", "agent", "end_user"]},
            "agent": {"type": "string"}, "end_user": {"type": "string"},
            "period": {"type": "string", "enum": ["day", "month"]}, "limit_usd": {"type": "number"},
            "created_at": {"type": "string", "format": "date-time"}}},
        "CreateBudget": {"type": "object", "required": ["subject", "period", "limit_usd"], "additionalProperties": false, "properties": {
            "subject": {"type": "string", "enum": ["workspace", "agent", "end_user"]},
            "agent": {"type": "string", "description": "for subject agent: the agent capped; absent caps each agent separately"},
            "end_user": {"type": "string", "description": "for subject end_user: the end-user capped; absent caps each end-user separately"},
            "period": {"type": "string", "enum": ["day", "month"], "description": "UTC calendar day or month"},
            "limit_usd": {"type": "number", "minimum": 0}}},
        "UsageRow": usage_row,
        "UsageReport": {"type": "object", "required": ["from", "to", "data", "total"], "properties": {
            "from": {"type": "string", "format": "date"}, "to": {"type": "string", "format": "date"},
            "data": {"type": "array", "items": r("UsageRow")}, "total": r("UsageRow")}}
    });
    merge(doc, paths, schemas);
    let scopes = json!({"type": "array", "items": {"type": "string"}, "minItems": 1,
        "description": "permissions (`resource:action`) the key is narrowed to, each held by its role; absent: all of the role's. A scoped key only creates keys scoped within its own"});
    for schema in ["CreateKey", "ApiKeyInfo"] {
        if let Some(Value::Object(props)) =
            doc.pointer_mut(&format!("/components/schemas/{schema}/properties"))
        {
            props.insert("scopes".to_owned(), scopes.clone());
        }
    }
    if let Some(Value::Object(run)) = doc.pointer_mut("/components/schemas/Run/properties") {
        run.insert(
            "end_user".to_owned(),
            json!({"type": "string", "description": "the end-user the run acts for"}),
        );
        run.insert(
            "created_by".to_owned(),
            json!({"type": "string", "description": "the API key (`key_…`) or member (`usr_…`) that started it"}),
        );
    }
}

fn merge(doc: &mut Value, paths: Value, schemas: Value) {
    for (key, add) in [("paths", paths), ("components/schemas", schemas)] {
        if let (Some(Value::Object(target)), Value::Object(add)) =
            (doc.pointer_mut(&format!("/{key}")), add)
        {
            target.extend(add);
        }
    }
}

/// `/v1/audit` and `/v1/audit/verify` with their schemas (apart to keep each `json!` small).
fn add_audit(doc: &mut Value) {
    let time = |name: &str, what: &str| {
        param(
            name,
            "query",
            what,
            json!({"type": "string", "format": "date-time"}),
        )
    };
    let paths = json!({
        "/v1/audit": {"get": {"summary": "The workspace's audit trail (oldest first): who did what, when, on what, from where, with what outcome",
            "parameters": [
                time("from", "only entries at or after this RFC 3339 time"),
                time("to", "only entries at or before this RFC 3339 time"),
                param("actor", "query", "only entries by this key id (`key_…`)", json!({"type": "string"})),
                param("action", "query", "only this action, e.g. `run.created`", json!({"type": "string"})),
                param("resource", "query", "only resources starting with this, e.g. `secret/`", json!({"type": "string"})),
                param("cursor", "query", "from a previous page's next_cursor (a seq)", json!({"type": "string"})),
                param("limit", "query", "page size (1-1000, default 100)", json!({"type": "integer"}))],
            "responses": with_errors(json_ok("200", "a page of entries", page_of("AuditEntry")), &[400])}},
        "/v1/audit/verify": {"get": {"summary": "Recompute every hash and link of the workspace's chain; names the first broken entry. With a checkpoint (seq and hash from GET /v1/audit/checkpoint, kept outside Paddock) it also fails if the chain was truncated below it or rewritten up to it",
            "parameters": [
                param("seq", "query", "checkpoint: the entry's seq", json!({"type": "integer", "minimum": 0})),
                param("hash", "query", "checkpoint: the entry's hash (64 hex digits)", json!({"type": "string"}))],
            "responses": with_errors(json_ok("200", "the verdict", r("AuditVerify")), &[400])}},
        "/v1/audit/checkpoint": {"get": {"summary": "The chain's newest entry (seq, hash): store it outside Paddock and verify against it later to detect truncation or a rewrite",
            "responses": with_errors(json_ok("200", "the checkpoint", r("AuditCheckpoint")), &[409])}}
    });
    let schemas = json!({
        "AuditEntry": {"type": "object", "required": ["seq", "at", "actor", "action", "resource", "outcome", "detail", "prev_hash", "hash"], "properties": {
            "seq": {"type": "integer", "minimum": 1}, "at": {"type": "string", "format": "date-time"},
            "actor": {"type": "object", "required": ["kind"], "properties": {
                "kind": {"type": "string", "enum": ["api_key", "member", "system", "anonymous"]},
                "key_id": {"type": "string"}, "role": r("Role"), "end_user": {"type": "string"},
                "member_id": {"type": "string", "description": "the member of a login session (kind `member`)"}}},
            "action": {"type": "string"}, "resource": {"type": "string"},
            "outcome": {"type": "string", "enum": ["ok", "denied", "error"]},
            "ip": {"type": ["string", "null"]}, "user_agent": {"type": ["string", "null"]},
            "detail": {"type": "object"},
            "prev_hash": {"type": "string", "description": "hash of the previous entry; 64 zeros for the first"},
            "hash": {"type": "string", "description": "hex SHA-256 of the canonical form (every field but hash, with the workspace)"}}},
        "AuditCheckpoint": {"type": "object", "required": ["org", "workspace", "seq", "hash", "at"], "properties": {
            "org": {"type": "string"}, "workspace": {"type": "string"}, "seq": {"type": "integer"},
            "hash": {"type": "string"}, "at": {"type": "string", "format": "date-time"}}},
        "AuditVerify": {"type": "object", "required": ["ok", "entries"], "properties": {
            "ok": {"type": "boolean"}, "entries": {"type": "integer"},
            "first_broken": {"type": "object", "required": ["seq", "reason"], "properties": {
                "seq": {"type": "integer"},
                "reason": {"type": "string", "enum": ["hash mismatch", "prev_hash does not link", "sequence gap", "checkpoint entry missing", "checkpoint hash differs"]}}}}}
    });
    merge(doc, paths, schemas);
}
