// PartCam phone page: camera → JPEG frame → Socket.IO → coloured overlay back, one frame in flight.
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

  const state = {
    info: null, socket: null, stream: null,
    task: "parts", view: "overlay", facing: "environment", opacity: 0.6,
    nextId: 1, inFlight: null, sideIndex: 0, rttAvg: null, resultTimes: [], lastUrl: null,
  };
  const canvas = document.createElement("canvas");
  const context = canvas.getContext("2d", { alpha: false });

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

  function pump() {
    const socket = state.socket;
    if (!socket || !socket.connected || !state.info) return;
    if (state.inFlight && performance.now() - state.inFlight.sentAt < FRAME_TIMEOUT_MS) return;
    const video = ui.video;
    if (!video.videoWidth || video.readyState < 2) return;
    const scale = Math.min(1, LONG_SIDES[state.sideIndex] / Math.max(video.videoWidth, video.videoHeight));
    canvas.width = Math.round(video.videoWidth * scale);
    canvas.height = Math.round(video.videoHeight * scale);
    context.drawImage(video, 0, 0, canvas.width, canvas.height);
    const frame = { id: state.nextId++, task: state.task, view: state.view, opacity: state.opacity };
    state.inFlight = { id: frame.id, sentAt: performance.now() };
    canvas.toBlob(async (blob) => {
      if (!blob) { state.inFlight = null; return; }
      frame.image = await blob.arrayBuffer();
      if (state.inFlight && state.inFlight.id === frame.id) socket.emit("frame", frame);
    }, "image/jpeg", JPEG_QUALITY);
    ui.frameSize.textContent = `${canvas.width}×${canvas.height}`;
  }

  function onResult(result) {
    const now = performance.now();
    if (!state.inFlight || state.inFlight.id !== result.id) return; // a late answer to a timed-out frame
    const rtt = now - state.inFlight.sentAt;
    state.inFlight = null;
    adaptFrameSize(rtt);

    const url = URL.createObjectURL(new Blob([result.image], { type: "image/jpeg" }));
    ui.overlay.onload = () => {
      if (state.lastUrl) URL.revokeObjectURL(state.lastUrl);
      state.lastUrl = url;
      ui.overlay.classList.remove("hidden");
    };
    ui.overlay.src = url;

    ui.cnnSeconds.textContent = (result.cnn_ms / 1000).toFixed(3);
    ui.timing.textContent = `(${result.timing})`;
    state.resultTimes.push(now);
    while (state.resultTimes.length && now - state.resultTimes[0] > 2000) state.resultTimes.shift();
    const span = (now - state.resultTimes[0]) / 1000;
    const fps = state.resultTimes.length > 1 && span > 0 ? (state.resultTimes.length - 1) / span : 0;
    ui.fps.textContent = `${fps.toFixed(1)} fps`;
    ui.rtt.textContent = `${Math.round(rtt)} ms round trip`;
    pump();
  }

  function onServerError(error) {
    if (error && state.inFlight && error.id === state.inFlight.id) state.inFlight = null;
    toast(`Server refused a frame: ${error && error.message ? error.message : "unknown error"}`);
    setTimeout(pump, 250); // don't hammer a server that keeps refusing
  }

  function connect() {
    const token = new URLSearchParams(location.search).get("token");
    const socket = io({ auth: token ? { token } : {}, transports: ["websocket", "polling"], reconnectionDelayMax: 4000 });
    state.socket = socket;
    socket.on("connect", () => { setConnection("online", "Live"); state.inFlight = null; pump(); });
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
