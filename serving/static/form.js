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
  hideExplanation();
  try {
    const res = await fetch("/predict", {method: "POST", headers, body: JSON.stringify(record)});
    const body = await res.json();
    if (res.ok) {
      out.className = "";
      let text = "Prediction: " + body.predictions[0];
      if (body.probabilities) text += "\n" + JSON.stringify(body.probabilities[0]);
      if (body.warnings) text += "\nWarnings: " + body.warnings.map(w => w.field + ": " + w.problem).join("; ");
      out.textContent = text;
      if (form.dataset.explain === "on") await explain(record, headers, body.predictions[0]);
    } else {
      out.className = "error";
      out.textContent = "Error " + res.status + ": " + body.error.message;
    }
  } catch (err) {
    out.className = "error";
    out.textContent = "Request failed: " + err;
  }
});

// The prediction's explanation (POST /explain) as a bar chart: one bar per input column, its contribution to the
// prediction (right: raises it, left: lowers it), largest first. SVG built element by element: no inline script or
// style (the page's CSP), and no markup made of the model's column names.
const SVG = "http://www.w3.org/2000/svg";
const MAX_BARS = 12;  // the rest are summed into one bar
const figure = document.getElementById("explanation");
const caption = document.getElementById("explanation-caption");
const chart = document.getElementById("explanation-chart");

function hideExplanation() {
  figure.hidden = true;
  caption.textContent = "";
  caption.className = "";
  chart.replaceChildren();
}

async function explain(record, headers, prediction) {
  let res, body;
  try {
    res = await fetch("/explain", {method: "POST", headers, body: JSON.stringify({dataframe_records: [record]})});
    body = await res.json();
  } catch (err) {
    return showNote("No explanation: " + err);
  }
  if (!res.ok) return showNote("No explanation: " + body.error.message);
  draw(body, prediction);
}

function showNote(text) {
  caption.textContent = text;
  caption.className = "note";
  figure.hidden = false;
}

function svg(tag, attributes, text) {
  const el = document.createElementNS(SVG, tag);
  for (const [name, value] of Object.entries(attributes)) el.setAttribute(name, value);
  if (text !== undefined) el.textContent = text;
  return el;
}

function short(v) {
  return Math.abs(v) >= 1000 || (v !== 0 && Math.abs(v) < 0.001) ? v.toExponential(2) : String(+v.toFixed(3));
}

function draw(body, prediction) {
  const row = body.explanations[0];
  let base = row.base_value, contributions = row.contributions, what = "the prediction";
  if (typeof base !== "number") {  // classification: the predicted class's slice, or the only one (binary log-odds)
    const classes = Object.keys(contributions);
    const cls = classes.includes(String(prediction)) ? String(prediction) : classes[0];
    base = base[cls];
    contributions = contributions[cls];
    what = (body.output === "log_odds" ? "the log-odds of " : "the probability of ") + cls +
      (body.calibrated ? " (before calibration)" : "");
  }
  let bars = Object.entries(contributions).sort((a, b) => Math.abs(b[1]) - Math.abs(a[1]));
  if (bars.length > MAX_BARS) {
    const rest = bars.slice(MAX_BARS - 1);
    bars = bars.slice(0, MAX_BARS - 1);
    bars.push([rest.length + " other columns", rest.reduce((sum, bar) => sum + bar[1], 0)]);
  }
  const total = base + Object.values(contributions).reduce((sum, v) => sum + v, 0);
  caption.textContent = "Why " + what + " is " + short(total) + ": base value " + short(base) +
    " plus each column's contribution (right: raises it, left: lowers it).";
  caption.className = "";
  const width = 640, labelWidth = 200, valueWidth = 70, rowHeight = 24;
  const half = (width - labelWidth - 2 * valueWidth) / 2, zero = labelWidth + valueWidth + half;
  const largest = Math.max(...bars.map(bar => Math.abs(bar[1]))) || 1;
  chart.setAttribute("width", width);
  chart.setAttribute("height", bars.length * rowHeight + 8);
  chart.setAttribute("viewBox", "0 0 " + width + " " + (bars.length * rowHeight + 8));
  chart.setAttribute("data-output", body.output);
  chart.setAttribute("data-base", base);
  chart.setAttribute("data-total", total);
  bars.forEach(([column, value], i) => {
    const y = 4 + i * rowHeight, length = Math.abs(value) / largest * half;
    const g = svg("g", {"class": "bar " + (value < 0 ? "negative" : "positive"), "data-column": column,
                        "data-value": value});
    g.append(svg("text", {"x": labelWidth - 8, "y": y + 16, "text-anchor": "end", "class": "label"}, column));
    g.append(svg("rect", {"x": value < 0 ? zero - length : zero, "y": y + 3, "width": Math.max(length, 1),
                          "height": rowHeight - 6}));
    g.append(svg("text", {"x": value < 0 ? zero - length - 4 : zero + length + 4, "y": y + 16,
                          "text-anchor": value < 0 ? "end" : "start", "class": "value"},
                 (value < 0 ? "" : "+") + short(value)));
    g.append(svg("title", {}, column + ": " + value));
    chart.append(g);
  });
  chart.append(svg("line", {"x1": zero, "x2": zero, "y1": 0, "y2": bars.length * rowHeight + 8, "class": "zero"}));
  figure.hidden = false;
}
