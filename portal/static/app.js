// Small progressive enhancements; no inline scripts so a strict CSP holds.
document.addEventListener("click", function (event) {
  const button = event.target.closest("[data-copy-target]");
  if (!button) return;
  const source = document.getElementById(button.dataset.copyTarget);
  if (!source) return;
  navigator.clipboard.writeText(source.textContent.trim()).then(function () {
    button.textContent = "Copied";
  });
});

// "Download as file" for a generated key: built in the browser, never fetched again.
document.addEventListener("click", function (event) {
  const button = event.target.closest("[data-download-target]");
  if (!button) return;
  const source = document.getElementById(button.dataset.downloadTarget);
  if (!source) return;
  const blob = new Blob([source.textContent.trim() + "\n"], { type: "text/plain" });
  const link = document.createElement("a");
  link.href = URL.createObjectURL(blob);
  link.download = button.dataset.filename || "byok-key.txt";
  document.body.appendChild(link);
  link.click();
  link.remove();
  setTimeout(function () { URL.revokeObjectURL(link.href); }, 1000);
});

// A shown-once key must not survive in the page when it is left (back/forward cache).
window.addEventListener("pagehide", function () {
  document.querySelectorAll("[data-secret]").forEach(function (el) { el.remove(); });
});
