/* persist web: the little the page does itself (everything else is htmx): swap live rows in cheaply, keep the live list to a
   bounded length, copy a conversation as a prompt, and show where a thread was opened. */
(function () {
  // The live list's swap: a chunk of new rows goes in under the header as it is. The rows hold only plain
  // links, so htmx's own processing of each new element (a third of a millisecond a row here) is skipped.
  htmx.defineExtension("prepend-rows", {
    handleSwap: function (style, target, fragment) {
      if (style !== "prepend-rows") return false;
      target.after(fragment);
      return true;
    }
  });
  var MAX_ROWS = 300;  // rows kept in the live list (older ones are a search or a thread away)
  document.body.addEventListener("htmx:sseMessage", function () {
    var list = document.getElementById("rows");  // a chunk of rows per event, newest on top
    if (!list) return;
    var empty = document.getElementById("no-rows");
    if (empty) empty.remove();
    var shown = list.querySelectorAll(".rec[data-seq]");
    for (var i = MAX_ROWS; i < shown.length; i++) shown[i].remove();
  });
  document.body.addEventListener("htmx:afterSwap", function (ev) {
    if (ev.target.id !== "prompt-out") return;
    var text = document.getElementById("prompt-text");
    if (!text) return;
    text.select();
    var done = function () { var n = document.getElementById("copied"); if (n) n.hidden = false; };
    if (navigator.clipboard && window.isSecureContext) {
      navigator.clipboard.writeText(text.value).then(done, function () { document.execCommand("copy"); done(); });
    } else { document.execCommand("copy"); done(); }
  });
  var target = location.hash && document.getElementById(location.hash.slice(1));
  if (target) { target.classList.add("target"); target.scrollIntoView({block: "center"}); }
})();
