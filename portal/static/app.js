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

// --- Answers to htmx requests that failed, and feedback that went stale --------------------
// A form opts in with a feedback region (data-request-feedback, valued with what its
// requests are, e.g. "key operations"): any non-2xx answer but 422 (field feedback, swapped
// by the server) is explained there, in words, instead of being swapped somewhere else or
// silently dropped. A request that never got an answer is explained the same way, anywhere.

function feedbackForm(elt) {
  const form = elt && elt.closest ? elt.closest("form") : null;
  return form && form.querySelector("[data-request-feedback]") ? form : null;
}

function secondsToWait(xhr) {
  const header = xhr.getResponseHeader("Retry-After");
  if (!header) return null;
  let seconds = Number(header);
  if (!Number.isFinite(seconds)) seconds = (Date.parse(header) - Date.now()) / 1000;
  return Number.isFinite(seconds) ? Math.max(1, Math.ceil(seconds)) : null;
}

function serverReference(xhr) {
  try {
    const html = new DOMParser().parseFromString(xhr.responseText || "", "text/html");
    const code = html.querySelector(".error-page code");
    return code ? code.textContent.trim() : "";
  } catch (e) {
    return "";
  }
}

function failureMessage(xhr, what) {
  if (!xhr || !xhr.status) {
    return "The portal could not be reached: check your connection, then try again.";
  }
  const status = xhr.status;
  if (status === 429) {
    const wait = secondsToWait(xhr);
    return "Too many " + (what || "requests") + "; try again in " +
      (wait ? wait + " s." : "a minute.");
  }
  if (status === 400) return "The request was refused (400): reload the page, then try again.";
  if (status === 401) return "Your session has ended: sign in again.";
  if (status === 403) return "You are not allowed to do this (403).";
  if (status === 404) return "Not found (404): reload the page; it may have changed.";
  if (status >= 500) {
    const ref = serverReference(xhr);
    return "Something went wrong on the server (" + status + "). Try again in a moment" +
      (ref ? "; reference " + ref + "." : ".");
  }
  return "The request failed (" + status + "): reload the page, then try again.";
}

function globalRegion() {
  let region = document.getElementById("request-feedback");
  if (!region) {
    region = document.createElement("div");
    region.id = "request-feedback";
    region.className = "feedback";
    (document.getElementById("main") || document.body).prepend(region);
  }
  return region;
}

function showFailure(elt, xhr) {
  const form = feedbackForm(elt);
  const region = form ? form.querySelector("[data-request-feedback]") : globalRegion();
  if (form) {
    // What the form said before is about an earlier answer: it no longer holds.
    form.querySelectorAll(".feedback .error").forEach(function (el) { el.remove(); });
    form.querySelectorAll("[aria-invalid]").forEach(function (el) {
      el.removeAttribute("aria-invalid");
    });
  }
  const text = failureMessage(xhr, region.dataset.requestFeedback);
  if (region.textContent.trim() === text) return; // a poll failing again says nothing new
  const message = document.createElement("p");
  message.className = "error";
  message.setAttribute("role", "alert");
  message.setAttribute("data-request-failure", "");
  message.textContent = text;
  region.replaceChildren(message);
}

document.addEventListener("htmx:beforeRequest", function (event) {
  const form = feedbackForm(event.detail.elt);
  if (!form) return;
  form.querySelectorAll("[data-request-failure]").forEach(function (el) { el.remove(); });
});

document.addEventListener("htmx:afterRequest", function (event) {
  const region = document.getElementById("request-feedback");
  if (region && event.detail.successful) region.replaceChildren();
});

document.addEventListener("htmx:beforeSwap", function (event) {
  if (event.detail.isError && feedbackForm(event.detail.elt)) event.detail.shouldSwap = false;
});

document.addEventListener("htmx:responseError", function (event) {
  if (feedbackForm(event.detail.elt)) showFailure(event.detail.elt, event.detail.xhr);
});

["htmx:sendError", "htmx:timeout"].forEach(function (name) {
  document.addEventListener(name, function (event) { showFailure(event.detail.elt, null); });
});

// A field's message is about what the field held: it goes as soon as the field changes.
// A changed or newly generated key also undoes "Test passed": the key must be tested again.
function resetTest(form) {
  if (!form) return;
  form.querySelectorAll(".feedback .ok").forEach(function (el) { el.remove(); });
  const tested = form.querySelector("input[name=tested_fingerprint]");
  if (tested) tested.value = "";
}

function fieldChanged(event) {
  const field = event.target;
  const form = feedbackForm(field);
  if (!form || !field.name || field.type === "hidden") return;
  (field.getAttribute("aria-describedby") || "").split(/\s+/).forEach(function (id) {
    const box = id.endsWith("-feedback") ? document.getElementById(id) : null;
    if (box) box.replaceChildren();
  });
  field.removeAttribute("aria-invalid");
  form.querySelectorAll("[data-request-feedback]").forEach(function (el) { el.replaceChildren(); });
  if (field.tagName === "TEXTAREA") resetTest(form);
}
document.addEventListener("input", fieldChanged);
document.addEventListener("change", fieldChanged);

document.addEventListener("htmx:afterSwap", function (event) {
  const target = event.detail.target;
  if (target && target.dataset && target.dataset.resetsTest) {
    resetTest(document.getElementById(target.dataset.resetsTest));
  }
});

// After the server's field feedback is swapped in, a field is invalid exactly when its own
// feedback holds an error, so assistive technology hears it with the field.
function markInvalid(form) {
  if (!form) return;
  form.querySelectorAll("[aria-describedby]").forEach(function (field) {
    const boxes = field.getAttribute("aria-describedby").split(/\s+/)
      .filter(function (id) { return id.endsWith("-feedback"); })
      .map(function (id) { return document.getElementById(id); });
    const invalid = boxes.some(function (box) { return box && box.querySelector(".error"); });
    if (invalid) field.setAttribute("aria-invalid", "true");
    else field.removeAttribute("aria-invalid");
  });
}
["htmx:afterRequest", "htmx:afterSettle"].forEach(function (name) {
  document.addEventListener(name, function (event) { markInvalid(feedbackForm(event.detail.elt)); });
});
