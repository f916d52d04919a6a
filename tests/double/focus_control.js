// The double's own control and reports on the page's second socket (`noise`), not the
// site's. On request another text box takes the focus (as a search field or a dialog would),
// so typed text no longer reaches the prompt box (`Double::blur_prompt_boxes`).
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

// Where the mouse pointer is when the send button is pressed (`Double::pointer_moves`,
// `Double::presses`): whether it came onto the button by a move before the press, as a
// hand does, or only appeared there with the press.
let pointerOnSend = false;
const onSend = (e) => e.isTrusted && sendButton !== null && sendButton.contains(e.target);
document.addEventListener("mousemove", (e) => {
  if (pointerOnSend || !onSend(e)) return;
  pointerOnSend = true;
  noise.send("pointer-on-send");
}, true);
document.addEventListener("mousedown", (e) => {
  if (onSend(e)) noise.send(pointerOnSend ? "pressed-after-move" : "pressed-without-move");
}, true);
