// The double's own control on the page's second socket (`noise`), not the site's: on
// request another text box takes the focus (as a search field or a dialog would), so typed
// text no longer reaches the prompt box (`Double::blur_prompt_boxes`).
noise.onmessage = (e) => {
  if (e.data !== "blur-prompt-box") return;
  let sink = document.getElementById("double-search");
  if (!sink) {
    sink = document.createElement("input");
    sink.id = "double-search";
    sink.setAttribute("aria-label", "Search");
    document.body.appendChild(sink);
  }
  sink.focus();
  noise.send("blurred");
};
