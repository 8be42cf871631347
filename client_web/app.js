// PartCam phone page: camera → JPEG frame → Socket.IO → label map back, coloured and blended here over
// the frame that was sent. Two frames in flight, so the network and the server's engine overlap.
(() => {
  "use strict";

  const $ = (id) => document.getElementById(id);
  const ui = {
    stage: $("stage"), video: $("camera"), overlay: $("overlay"),
    connection: $("connection"), connectionText: $("connection-text"),
    cnnSeconds: $("cnn-seconds"), timing: $("timing"), fps: $("fps"), rtt: $("rtt"), frameSize: $("frame-size"),
    untrained: $("untrained"), offline: $("offline"), toast: $("toast"),
    message: $("message"), messageTitle: $("message-title"), messageBody: $("message-body"), messageRetry: $("message-retry"),
    legend: $("legend"), tasks: $("tasks"), attention: $("attention"), flip: $("flip"),
    opacity: $("opacity"), opacityValue: $("opacity-value"),
  };

  // Long sides the page steps between to keep the frame rate up on slow links or servers.
  const LONG_SIDES = [640, 480, 384, 288];
  const FRAME_TIMEOUT_MS = 5000;
  const JPEG_QUALITY = 0.72;
  // While the server runs one frame the next is already on its way; the server keeps only the
  // latest waiting frame per client, so a third would only replace the second.
  const MAX_IN_FLIGHT = 2;
  // "labels": the server sends class indices as a PNG and this page paints them (opacity changes
  // need no round trip); "jpeg": the server sends the finished overlay (?form=jpeg, for comparison).
  const FORM = new URLSearchParams(location.search).get("form") === "jpeg" ? "jpeg" : "labels";

  const state = {
    info: null, socket: null, stream: null,
    task: "parts", view: "overlay", facing: "environment", opacity: 0.6,
    nextId: 1, inFlight: [], sideIndex: 0, rttAvg: null, resultTimes: [], shown: null, form: FORM,
  };
  const canvas = document.createElement("canvas");
  const context = canvas.getContext("2d", { alpha: false });
  const view = ui.overlay.getContext("2d", { alpha: false });

  function showMessage(title, body, retry) {
    ui.messageTitle.textContent = title;
    ui.messageBody.textContent = body;
    ui.messageRetry.classList.toggle("hidden", !retry);
    ui.messageRetry.onclick = retry || null;
    ui.message.classList.remove("hidden");
  }
  const hideMessage = () => ui.message.classList.add("hidden");

  let toastTimer = 0;
  function toast(text) {
    ui.toast.textContent = text;
    ui.toast.classList.remove("hidden");
    clearTimeout(toastTimer);
    toastTimer = setTimeout(() => ui.toast.classList.add("hidden"), 3500);
  }

  function setConnection(kind, text) {
    ui.connection.className = `pill ${kind}`;
    ui.connectionText.textContent = text;
    ui.offline.classList.toggle("hidden", kind !== "offline");
  }

  // ---- server info, legend and controls ------------------------------------------------------
  async function loadInfo() {
    for (let attempt = 0; ; attempt++) {
      try {
        const response = await fetch("/api/info", { cache: "no-store" });
        if (!response.ok) throw new Error(`HTTP ${response.status}`);
        return await response.json();
      } catch (error) {
        setConnection("offline", "Offline");
        await new Promise((resolve) => setTimeout(resolve, Math.min(8000, 1000 * 2 ** attempt)));
      }
    }
  }

  const rgb = (c) => `rgb(${c[0]}, ${c[1]}, ${c[2]})`;

  function renderLegend() {
    const task = state.info.tasks[state.task];
    ui.legend.replaceChildren();
    const entries = state.view === "attention"
      ? task.model.scales.map((scale, i) => [`scale ${scale}×`, task.model.scale_colours[i]])
      : task.classes.map((name, i) => [name, task.palette[i]]).slice(1); // background is never painted
    for (const [name, colour] of entries) {
      const item = document.createElement("li");
      const swatch = document.createElement("span");
      swatch.className = "swatch";
      swatch.style.background = rgb(colour);
      item.append(swatch, document.createTextNode(name));
      ui.legend.append(item);
    }
  }

  function renderControls() {
    ui.tasks.replaceChildren();
    for (const [name, task] of Object.entries(state.info.tasks)) {
      const button = document.createElement("button");
      button.type = "button";
      button.setAttribute("role", "radio");
      button.textContent = name === "parts" ? "Parts" : name === "clothes" ? "Clothes" : task.title;
      button.setAttribute("aria-checked", String(name === state.task));
      button.onclick = () => { state.task = name; renderControls(); renderLegend(); };
      ui.tasks.append(button);
    }
    const hasAttention = Boolean(state.info.tasks[state.task].model.attention);
    ui.attention.disabled = !hasAttention;
    if (!hasAttention) state.view = "overlay";
    ui.attention.setAttribute("aria-pressed", String(state.view === "attention"));
  }

  ui.attention.onclick = () => {
    state.view = state.view === "attention" ? "overlay" : "attention";
    renderControls();
    renderLegend();
  };
  ui.opacity.oninput = () => {
    state.opacity = Number(ui.opacity.value) / 100;
    ui.opacityValue.textContent = `${ui.opacity.value}%`;
    draw(); // label results are blended here: the new opacity shows at once
  };
  ui.flip.onclick = () => {
    state.facing = state.facing === "environment" ? "user" : "environment";
    startCamera();
  };

  // ---- camera ---------------------------------------------------------------------------------
  async function startCamera() {
    if (!window.isSecureContext || !navigator.mediaDevices || !navigator.mediaDevices.getUserMedia) {
      showMessage("This page needs a secure connection",
        "Browsers only give the camera to https:// pages. Open the https:// address the server printed " +
        "(or its QR code), accept the certificate warning once, and try again.");
      return;
    }
    if (state.stream) state.stream.getTracks().forEach((track) => track.stop());
    try {
      state.stream = await navigator.mediaDevices.getUserMedia({
        audio: false,
        video: { facingMode: { ideal: state.facing }, width: { ideal: 1280 }, height: { ideal: 720 } },
      });
    } catch (error) {
      state.stream = null;
      const refused = error && (error.name === "NotAllowedError" || error.name === "SecurityError");
      const missing = error && (error.name === "NotFoundError" || error.name === "OverconstrainedError");
      showMessage(refused ? "Camera access was refused" : missing ? "No camera found" : "The camera could not start",
        refused ? "Allow the camera for this site in the browser's settings (the icon by the address bar), then try again."
          : missing ? "This device has no camera the browser can use." : `${error && error.message ? error.message : error}`,
        startCamera);
      return;
    }
    hideMessage();
    ui.video.srcObject = state.stream;
    const settings = state.stream.getVideoTracks()[0].getSettings();
    const facing = settings.facingMode || state.facing;
    ui.stage.classList.toggle("mirrored", facing === "user");
    try { await ui.video.play(); } catch (error) { /* autoplay resumes on the first tap */ }
    pump();
  }

  // ---- frames out, results in -----------------------------------------------------------------
  function adaptFrameSize(rtt) {
    state.rttAvg = state.rttAvg === null ? rtt : 0.8 * state.rttAvg + 0.2 * rtt;
    if (state.rttAvg > 260 && state.sideIndex < LONG_SIDES.length - 1) { state.sideIndex++; state.rttAvg = null; }
    else if (state.rttAvg < 110 && state.sideIndex > 0) { state.sideIndex--; state.rttAvg = null; }
  }

  function forget(entry) {
    if (entry && entry.frame && entry.frame.close) entry.frame.close();
  }

  function pump() {
    const socket = state.socket;
    if (!socket || !socket.connected || !state.info) return;
    const now = performance.now();
    state.inFlight = state.inFlight.filter((entry) => {
      const alive = now - entry.sentAt < FRAME_TIMEOUT_MS;
      if (!alive) forget(entry);
      return alive;
    });
    if (state.inFlight.length >= MAX_IN_FLIGHT) return;
    const video = ui.video;
    if (!video.videoWidth || video.readyState < 2) return;
    const scale = Math.min(1, LONG_SIDES[state.sideIndex] / Math.max(video.videoWidth, video.videoHeight));
    canvas.width = Math.round(video.videoWidth * scale);
    canvas.height = Math.round(video.videoHeight * scale);
    context.drawImage(video, 0, 0, canvas.width, canvas.height);
    const frame = { id: state.nextId++, task: state.task, view: state.view, opacity: state.opacity, form: state.form };
    const entry = { id: frame.id, sentAt: now, frame: null };
    state.inFlight.push(entry);
    // Keep the very pixels that were sent: the labels are drawn over them, not over a later frame.
    if (state.form === "labels") createImageBitmap(canvas).then((bitmap) => { entry.frame = bitmap; });
    canvas.toBlob(async (blob) => {
      if (!blob) { state.inFlight = state.inFlight.filter((e) => e !== entry); return; }
      frame.image = await blob.arrayBuffer();
      if (state.inFlight.includes(entry)) socket.emit("frame", frame);
    }, "image/jpeg", JPEG_QUALITY);
    ui.frameSize.textContent = `${canvas.width}×${canvas.height}`;
    if (state.inFlight.length < MAX_IN_FLIGHT) setTimeout(pump, 30); // the next camera frame
  }

  // Palette as 32-bit RGBA words (little-endian ABGR); background or nothing painted is transparent.
  function lookupTable(result) {
    const task = state.info.tasks[result.task];
    const attention = result.view === "attention";
    const colours = attention ? task.model.scale_colours : task.palette;
    const table = new Uint32Array(256);
    colours.forEach((c, i) => {
      if (i > 0 || attention) table[i] = (255 << 24 | c[2] << 16 | c[1] << 8 | c[0]) >>> 0;
    });
    return table;
  }

  // The coloured label layer of one result, at the label map's size (its own canvas: results may
  // be decoded while another is drawn).
  async function paintLabels(result) {
    const bitmap = await createImageBitmap(new Blob([result.labels], { type: "image/png" }),
      { colorSpaceConversion: "none", premultiplyAlpha: "none" });
    const paint = document.createElement("canvas");
    paint.width = bitmap.width;
    paint.height = bitmap.height;
    const paintContext = paint.getContext("2d", { willReadFrequently: true });
    paintContext.drawImage(bitmap, 0, 0);
    bitmap.close();
    const pixels = paintContext.getImageData(0, 0, paint.width, paint.height);
    const words = new Uint32Array(pixels.data.buffer);
    const table = lookupTable(result);
    for (let i = 0; i < words.length; i++) words[i] = table[words[i] & 255]; // grey PNG: R = class index
    paintContext.putImageData(pixels, 0, 0);
    return paint;
  }

  // The shown result: the sent frame with the painted labels blended at the current opacity, or
  // the server's finished JPEG.
  function draw() {
    const shown = state.shown;
    if (!shown) return;
    if (ui.overlay.width !== shown.width || ui.overlay.height !== shown.height) {
      ui.overlay.width = shown.width;
      ui.overlay.height = shown.height;
    }
    view.globalAlpha = 1;
    view.drawImage(shown.frame, 0, 0, shown.width, shown.height);
    if (shown.form === "labels") {
      view.globalAlpha = state.opacity;
      view.drawImage(shown.paint, 0, 0, shown.width, shown.height);
      view.globalAlpha = 1;
    }
    ui.overlay.classList.remove("hidden");
  }

  async function onResult(result) {
    const now = performance.now();
    const entry = state.inFlight.find((e) => e.id === result.id);
    if (!entry) return; // a late answer to a timed-out frame
    // Older frames still in flight were replaced on the server by this newer one: they never come back.
    state.inFlight = state.inFlight.filter((e) => {
      if (e.id < result.id) forget(e);
      return e.id > result.id;
    });
    const rtt = now - entry.sentAt;
    adaptFrameSize(rtt);
    pump(); // the next frame leaves before this one is drawn

    try {
      let frame;
      let paint = null;
      if (result.form === "labels") {
        frame = entry.frame || await createImageBitmap(canvas); // the snapshot is normally long ready
        paint = await paintLabels(result);
      } else {
        forget(entry);
        frame = await createImageBitmap(new Blob([result.image], { type: "image/jpeg" }));
      }
      const previous = state.shown;
      if (previous && previous.id > result.id) { // a newer result was drawn while this one decoded
        frame.close();
      } else {
        state.shown = { id: result.id, frame, paint, form: result.form, width: result.width, height: result.height };
        draw();
        if (previous) forget(previous);
      }
    } catch (error) {
      toast(`Could not draw a result: ${error && error.message ? error.message : error}`);
    }

    ui.cnnSeconds.textContent = (result.cnn_ms / 1000).toFixed(3);
    ui.timing.textContent = `(${result.timing})`;
    state.resultTimes.push(now);
    while (state.resultTimes.length && now - state.resultTimes[0] > 2000) state.resultTimes.shift();
    const span = (now - state.resultTimes[0]) / 1000;
    const fps = state.resultTimes.length > 1 && span > 0 ? (state.resultTimes.length - 1) / span : 0;
    ui.fps.textContent = `${fps.toFixed(1)} fps`;
    ui.rtt.textContent = `${Math.round(rtt)} ms round trip`;
  }

  function onServerError(error) {
    if (error) state.inFlight = state.inFlight.filter((e) => e.id !== error.id || (forget(e), false));
    toast(`Server refused a frame: ${error && error.message ? error.message : "unknown error"}`);
    setTimeout(pump, 250); // don't hammer a server that keeps refusing
  }

  function connect() {
    const token = new URLSearchParams(location.search).get("token");
    const socket = io({ auth: token ? { token } : {}, transports: ["websocket", "polling"], reconnectionDelayMax: 4000 });
    state.socket = socket;
    socket.on("connect", () => {
      setConnection("online", "Live");
      state.inFlight.forEach(forget);
      state.inFlight = [];
      pump();
    });
    socket.on("disconnect", () => setConnection("offline", "Offline"));
    socket.on("connect_error", (error) => {
      setConnection("offline", "Offline");
      if (!socket.active) { // refused at the handshake: retrying would not help
        showMessage("The server refused the connection",
          `${error.message}. Open the full link (with ?token=…) that the server printed.`);
      }
    });
    socket.on("result", onResult);
    socket.on("error", onServerError);
  }

  async function main() {
    state.info = await loadInfo();
    if (!state.info.tasks[state.task]) state.task = Object.keys(state.info.tasks)[0];
    ui.untrained.classList.toggle("hidden", Boolean(state.info.trained));
    ui.timing.textContent = `(${state.info.timing})`;
    renderControls();
    renderLegend();
    connect();
    ui.video.addEventListener("loadeddata", pump);
    setInterval(pump, 250); // a safety net: restarts the loop after timeouts or reconnects
    startCamera();
  }

  document.addEventListener("visibilitychange", () => { if (!document.hidden) pump(); });
  window.partcam = state; // handy for debugging from the console and for the browser test
  main();
})();
