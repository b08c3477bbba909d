// The study editor: reorder, remove and add runs. The order of the hidden "runs" inputs is the
// study's order when the form is saved; everything else is a plain form POST.
(function () {
  "use strict";

  function rows() { return document.getElementById("study-rows"); }

  function sync() {
    var list = rows();
    var empty = document.getElementById("empty-rows");
    if (empty) empty.hidden = list.children.length > 0;
    document.querySelectorAll(".add-run").forEach(function (button) {
      var added = !!list.querySelector('.study-row[data-run-id="' + button.dataset.runId + '"]');
      button.disabled = added;
      button.textContent = added ? "Added" : "Add";
    });
  }

  document.addEventListener("click", function (ev) {
    var target = ev.target.closest && ev.target.closest("button");
    if (!target) return;
    var row = target.closest(".study-row");
    if (row && target.classList.contains("move-up") && row.previousElementSibling) {
      row.parentNode.insertBefore(row, row.previousElementSibling);
      target.focus();
    } else if (row && target.classList.contains("move-down") && row.nextElementSibling) {
      row.parentNode.insertBefore(row.nextElementSibling, row);
      target.focus();
    } else if (row && target.classList.contains("remove")) {
      row.remove();
    } else if (target.classList.contains("add-run")) {
      var template = target.parentNode.querySelector("template");
      if (template) rows().appendChild(template.content.firstElementChild.cloneNode(true));
    } else {
      return;
    }
    sync();
  });

  document.addEventListener("DOMContentLoaded", function () { if (rows()) sync(); });
})();
