// Upload page: send the chosen or dropped image to POST /predict and show the answer;
// "Why?" sends it to POST /explain and shows the heat map of what drove the answer.
(function () {
  const $ = (id) => document.getElementById(id);
  const status = (text, isError) => {
    $("status").textContent = text;
    $("status").className = isError ? "error" : "";
  };

  fetch("/model").then((r) => (r.ok ? r.json() : null)).then((m) => {
    $("model").textContent = m ? `model: ${m.name} v${m.version} (${m.architecture}) · labels: ${m.labels.join(", ")}` : "model: not loaded yet";
  }).catch(() => {});

  let current = null; // the file on screen, for "Why?"

  // POST the image as the multipart field "file"; the JSON answer, or null once the
  // failure (network or an error status) is shown.
  async function postImage(path, file) {
    const form = new FormData();
    form.append("file", file, file.name);
    let response;
    let body;
    try {
      response = await fetch(path, { method: "POST", body: form });
      body = await response.json();
    } catch (err) {
      status(`Request failed: ${err}`, true);
      return null;
    }
    if (!response.ok) {
      status(`Error ${response.status}: ${body.detail || body.error}`, true);
      return null;
    }
    return body;
  }

  async function explain() {
    if (!current) return;
    status(`Explaining ${current.name}...`, false);
    const body = await postImage("/explain", current);
    if (!body) return;
    $("heat").src = `data:image/png;base64,${body.overlay_png}`;
    const cell = `row ${body.hottest.row + 1}, column ${body.hottest.col + 1} of ${body.grid.length} x ${body.grid[0].length}`;
    $("why-meta").textContent = `Coloured: the regions that speak for "${body.explained_label}" (strongest: ${cell}) · ${body.latency_ms.toFixed(1)} ms`;
    $("explanation").hidden = false;
    status("Done.", false);
  }

  async function predict(file) {
    if (!file) return;
    current = file;
    status(`Classifying ${file.name}...`, false);
    $("result").hidden = true; // an error must not leave the previous answer on screen
    $("explanation").hidden = true;
    document.body.dataset.state = "busy";
    const body = await postImage("/predict", file);
    if (!body) {
      document.body.dataset.state = "error";
      return;
    }
    if ($("preview").src) URL.revokeObjectURL($("preview").src);
    $("preview").src = URL.createObjectURL(file);
    $("label").textContent = body.label;
    // Out of distribution: say so instead of a label the model has no business giving.
    const known = Object.keys(body.probabilities).join(" or ");
    $("ood").textContent = `This does not look like a ${known} photo.`;
    $("ood").hidden = !body.out_of_distribution;
    $("answer").hidden = !!body.out_of_distribution;
    // Built node by node: the CSP (style-src 'self') blocks style attributes in markup,
    // not a width set on the element, and a label is text, never markup.
    const rows = Object.entries(body.probabilities).map(([label, p]) => {
      const row = document.createElement("tr");
      row.dataset.label = label;
      const name = row.insertCell();
      name.textContent = label;
      const cell = row.insertCell();
      const bar = cell.appendChild(document.createElement("span"));
      bar.className = "bar";
      bar.style.width = `${Math.round(p * 120)}px`;
      cell.append(`${(p * 100).toFixed(1)}%`);
      return row;
    });
    $("probs").querySelector("tbody").replaceChildren(...rows);
    $("meta").textContent = `model v${body.model_version} · ${body.latency_ms.toFixed(1)} ms · request ${body.request_id}`;
    $("result").hidden = false;
    status("Done.", false);
    document.body.dataset.state = "done";
  }

  $("why").addEventListener("click", explain);
  $("file").addEventListener("change", (e) => predict(e.target.files[0]));
  const drop = $("drop");
  ["dragenter", "dragover"].forEach((t) => drop.addEventListener(t, (e) => {
    e.preventDefault();
    drop.classList.add("over");
  }));
  ["dragleave", "drop"].forEach((t) => drop.addEventListener(t, (e) => {
    e.preventDefault();
    drop.classList.remove("over");
  }));
  drop.addEventListener("drop", (e) => predict(e.dataTransfer.files[0]));
})();
