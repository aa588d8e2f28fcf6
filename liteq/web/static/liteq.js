// Refresh the parts of a page marked data-refresh="URL" every data-every seconds, while
// the page is visible. The server renders (and escapes) the fragment; no job text is
// ever turned into markup here.
"use strict";

function refresh(part) {
  if (document.hidden) {
    return;
  }
  fetch(part.dataset.refresh, { credentials: "same-origin", cache: "no-store" })
    .then((response) => {
      if (!response.ok) {
        throw new Error(response.status + " " + response.statusText);
      }
      return response.text();
    })
    .then((html) => {
      const fragment = new DOMParser().parseFromString(html, "text/html");
      part.replaceChildren(...fragment.body.childNodes);
      part.classList.remove("stale");
    })
    .catch(() => part.classList.add("stale"));
}

document.addEventListener("DOMContentLoaded", () => {
  for (const part of document.querySelectorAll("[data-refresh]")) {
    const seconds = Number(part.dataset.every || "3");
    window.setInterval(() => refresh(part), seconds * 1000);
  }
});
