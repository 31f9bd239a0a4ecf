// Wixma dashboard: copy buttons, playground field toggling, and progress polling of jobs.
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

function renderJob(item, job) {
  item.dataset.status = job.status;
  const status = item.querySelector("[data-role=status]");
  status.textContent = job.status;
  status.className = "status status-" + job.status;
  item.querySelector("[data-role=progress]").value = job.progress;
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

function pollJobs() {
  const running = document.querySelectorAll(
    "li.job[data-status=pending], li.job[data-status=processing]");
  if (!running.length) return;
  Promise.all(Array.from(running).map(async (item) => {
    const response = await fetch(
      "/dashboard/generations/" + encodeURIComponent(item.dataset.generationId) + "/status",
      {headers: {Accept: "application/json"}, credentials: "same-origin"});
    if (response.ok) renderJob(item, await response.json());
  })).catch(() => {}).finally(() => setTimeout(pollJobs, 1000));
}

document.addEventListener("DOMContentLoaded", () => {
  setupCopyButtons();
  setupPlayground();
  pollJobs();
});
