// Wixma dashboard: copy buttons, playground field toggling, and live progress of running jobs
// (each follows its event stream; browsers without EventSource poll the status endpoint).
"use strict";

function setupCopyButtons() {
  document.querySelectorAll("[data-copy]").forEach((button) => {
    button.addEventListener("click", async () => {
      const text = document.querySelector(button.dataset.copy).textContent.trim();
      try {
        await navigator.clipboard.writeText(text);
        button.textContent = "Copied";
      } catch (error) {
        const range = document.createRange();  // no clipboard access: select it for Ctrl+C
        range.selectNodeContents(document.querySelector(button.dataset.copy));
        window.getSelection().removeAllRanges();
        window.getSelection().addRange(range);
        button.textContent = "Selected: press Ctrl+C";
      }
    });
  });
}

function setupPlayground() {
  const tool = document.getElementById("playground-tool");
  if (!tool) return;
  const update = () => {
    document.querySelectorAll("#playground [data-tools]").forEach((field) => {
      field.hidden = !field.dataset.tools.split(" ").includes(tool.value);
    });
  };
  tool.addEventListener("change", update);
  update();
}

function renderProgress(item, state) {
  item.dataset.status = state.status;
  const status = item.querySelector("[data-role=status]");
  status.textContent = state.status;
  status.className = "status status-" + state.status;
  item.querySelector("[data-role=progress]").value = state.progress;
  const step = item.querySelector("[data-role=step]");
  if (step) {
    step.hidden = !(state.steps && state.status === "processing");
    step.textContent = "step " + (state.step || 0) + "/" + (state.steps || 0);
  }
  const cancel = item.querySelector("[data-role=cancel]");
  if (cancel && (state.status === "completed" || state.status === "failed")) cancel.remove();
}

function renderJob(item, job) {
  renderProgress(item, job);
  const error = item.querySelector("[data-role=error]");
  error.hidden = !job.error;
  error.textContent = job.error ? (job.error_code || "") + " " + job.error : "";
  const thumbs = item.querySelector(".thumbs");
  if (job.output_urls.length && !thumbs.children.length) {
    job.output_urls.forEach((url, index) => {
      const link = document.createElement("a");
      link.href = url;
      const image = document.createElement("img");
      image.src = url;
      image.alt = "output " + (index + 1) + " of " + job.id;
      link.appendChild(image);
      thumbs.appendChild(link);
    });
  }
}

function jobUrl(item, suffix) {
  return "/dashboard/generations/" + encodeURIComponent(item.dataset.generationId) + suffix;
}

// Streams hold a connection each; browsers allow six per host over HTTP/1.1, so a few jobs are
// followed live and any others polled.
const MAX_STREAMS = 3;

function followJob(item) {
  item.dataset.following = "true";
  const events = new EventSource(jobUrl(item, "/events"));
  const onState = (message) => renderProgress(item, JSON.parse(message.data));
  events.addEventListener("status", onState);
  events.addEventListener("progress", onState);
  events.addEventListener("generation", (message) => {
    renderJob(item, JSON.parse(message.data));
    events.close();
  });
}

function followJobs() {
  if (typeof EventSource !== "undefined") {
    Array.from(document.querySelectorAll(
      "li.job[data-status=pending], li.job[data-status=processing]"))
      .slice(0, MAX_STREAMS).forEach(followJob);
  }
  pollJobs();
}

function pollJobs() {
  const running = document.querySelectorAll(
    "li.job[data-status=pending]:not([data-following]), " +
    "li.job[data-status=processing]:not([data-following])");
  if (!running.length) return;
  Promise.all(Array.from(running).map(async (item) => {
    const response = await fetch(jobUrl(item, "/status"),
      {headers: {Accept: "application/json"}, credentials: "same-origin"});
    if (response.ok) renderJob(item, await response.json());
  })).catch(() => {}).finally(() => setTimeout(pollJobs, 1000));
}

document.addEventListener("DOMContentLoaded", () => {
  setupCopyButtons();
  setupPlayground();
  followJobs();
});
