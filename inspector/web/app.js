// The inspector page: reads the form, asks the module (the filter's own
// decision core, built with wasm-bindgen), shows the answer. It fetches
// nothing but its own files (the module and, when present, prefill.json
// beside it); what is pasted stays in this page.
import init, { inspect_json } from "./inspector.js";

const $ = (id) => document.getElementById(id);

function text(node, value) {
  node.textContent = value;
}

function show(report) {
  const verdict = $("verdict");
  text($("error"), report.error || "");
  $("checks").replaceChildren();
  text($("pending"), "");
  text($("response"), "");
  text($("upstream"), "");
  const trace = report.trace;
  if (!trace) {
    verdict.className = "refused";
    text(verdict, "The filter would not start with this configuration");
  } else {
    const status = trace.status === null ? "?" : trace.status;
    verdict.className = trace.allowed ? "allowed" : trace.status === null ? "pending" : "refused";
    text(verdict, `${status} · ${trace.summary}`);
    for (const check of trace.checks) {
      const li = document.createElement("li");
      li.className = check.ok ? "ok" : "failed";
      li.dataset.check = check.name;
      const name = document.createElement("span");
      name.className = "name";
      text(name, check.name);
      li.append(name, document.createTextNode(check.detail));
      $("checks").append(li);
    }
    text($("pending"), trace.pending || "");
    const lines = [];
    if (trace.status !== null) lines.push(`HTTP ${trace.status}`);
    if (trace.www_authenticate) lines.push(`WWW-Authenticate: ${trace.www_authenticate}`);
    for (const [name, value] of Object.entries(trace.response_headers)) lines.push(`${name}: ${value}`);
    if (trace.body) lines.push("", trace.body);
    if (trace.allowed) lines.push("(forwarded to the upstream)");
    text($("response"), lines.join("\n"));
    const up = Object.entries(trace.upstream_headers).map(([n, v]) => `${n}: ${v}`);
    if (trace.removed_headers.length) up.push(`(removed: ${trace.removed_headers.join(", ")})`);
    text($("upstream"), trace.allowed ? up.join("\n") || "(no identity headers: a public route)" : "nothing: the request stops here");
  }
  $("warnings").replaceChildren();
  for (const w of report.lint) {
    const li = document.createElement("li");
    li.dataset.field = w.field;
    text(li, `${w.field}: ${w.message}`);
    $("warnings").append(li);
  }
  if (!report.lint.length) {
    const li = document.createElement("li");
    text(li, "none");
    $("warnings").append(li);
  }
}

function run() {
  const now = Number.parseInt($("now").value, 10);
  const input = {
    config: $("config").value,
    jwks: $("jwks").value,
    now: Number.isFinite(now) ? now : Math.floor(Date.now() / 1000),
    method: $("method").value,
    path: $("path").value,
    headers: $("headers").value,
    token: $("token").value,
    introspection_answer: $("answer").value,
  };
  show(JSON.parse(inspect_json(JSON.stringify(input))));
}

async function prefill() {
  try {
    const response = await fetch("./prefill.json", { cache: "no-store" });
    if (!response.ok) return;
    const values = await response.json();
    for (const [id, value] of Object.entries(values)) {
      if ($(id)) $(id).value = typeof value === "string" ? value : JSON.stringify(value, null, 2);
    }
  } catch (_) {
    // No prefill beside the page: start empty.
  }
}

await init();
$("now").value = Math.floor(Date.now() / 1000);
await prefill();
$("explain").addEventListener("click", run);
for (const id of ["method", "now"]) $(id).addEventListener("change", run);
window.inspectorReady = true;
run();
