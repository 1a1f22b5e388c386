// The form page's script (serving/templates/index.html): a file, so the page's CSP allows no inline script.
const form = document.getElementById("predict-form");
form.addEventListener("submit", async (event) => {
  event.preventDefault();
  const record = {};
  for (const el of form.querySelectorAll("[name]")) {
    if (el.tagName === "SELECT") { record[el.name] = JSON.parse(el.selectedOptions[0].dataset.json); continue; }
    const v = el.value;
    if (el.dataset.role) { if (v !== "") record[el.name] = v; continue; }  // key or ignored: only when given
    if (v === "") { record[el.name] = null; continue; }
    const numeric = el.dataset.dtype === "float" || el.dataset.dtype === "int";
    if (el.dataset.dtype === "datetime") {
      const unix = {unix: 1000, unix_ms: 1}[el.dataset.format];  // milliseconds per unit
      record[el.name] = unix ? Date.parse(v + "Z") / unix : v;  // the input's local time is UTC
      continue;
    }
    record[el.name] = numeric ? Number(v) : v;
  }
  const headers = {"Content-Type": "application/json"};
  const key = document.getElementById("api-key");
  if (key && key.value) headers["X-API-Key"] = key.value;
  const out = document.getElementById("result");
  try {
    const res = await fetch("/predict", {method: "POST", headers, body: JSON.stringify(record)});
    const body = await res.json();
    if (res.ok) {
      out.className = "";
      let text = "Prediction: " + body.predictions[0];
      if (body.probabilities) text += "\n" + JSON.stringify(body.probabilities[0]);
      if (body.warnings) text += "\nWarnings: " + body.warnings.map(w => w.field + ": " + w.problem).join("; ");
      out.textContent = text;
    } else {
      out.className = "error";
      out.textContent = "Error " + res.status + ": " + body.error.message;
    }
  } catch (err) {
    out.className = "error";
    out.textContent = "Request failed: " + err;
  }
});
