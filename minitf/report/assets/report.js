(function () {
  "use strict";
  var data = JSON.parse(document.getElementById("minitf-data").textContent);
  var diff = {};
  data.differential.forEach(function (h) { diff[h] = true; });
  function fmt(x) {
    if (x === null || x === undefined) return "\u2013";
    return (x < 0 ? "\u2212" : "+") + Math.abs(x).toFixed(3);
  }
  function visible(s) { return s.replace(/\r/g, "\u240d").replace(/\n/g, "\u23ce").replace(/\t/g, "\u21e5"); }
  function el(tag, cls, text) {
    var e = document.createElement(tag);
    if (cls) e.className = cls;
    if (text !== undefined && text !== null) e.textContent = text;
    return e;
  }
  function show(box, i) {
    var n = +box.getAttribute("data-p"), p = data.prompts[n], last = p.tokens.length - 1;
    var panel = document.getElementById("detail-" + n);
    var q = p.positions[i];
    var heads = q ? q.heads : (i === last ? p.top : null);
    var act = q ? q.a : (i === last ? p.activation : null);
    var pre = q ? q.pre : (i === last ? p.pre : null);
    panel.textContent = "";
    var head = el("div", "dhead");
    head.appendChild(el("span", "dim", "position " + i + (i === last ? " (traced)" : "") + " "));
    head.appendChild(el("span", "tok", visible(p.tokens[i]) || "\u200b"));
    head.appendChild(el("span", "", " activation " + fmt(act) + "  pre " + fmt(pre)));
    if (box.classList.contains("pinned")) head.appendChild(el("span", "dim small", "  (pinned: click again to unpin)"));
    panel.appendChild(head);
    if (!heads) {
      panel.appendChild(el("div", "dim small", "this trace has no per-position head effects"));
      return;
    }
    var scale = 0;
    heads.forEach(function (h) { scale = Math.max(scale, Math.abs(h[1])); });
    var list = el("div", "dheads");
    heads.forEach(function (h) {
      var row = el("span", "dh" + (diff[h[0]] ? " isdiff" : ""));
      row.appendChild(el("b", "", h[0]));
      var track = el("span", "track mini"), bar = el("span", "bar");
      bar.style.width = (scale ? 100 * Math.abs(h[1]) / scale : 0).toFixed(1) + "%";
      bar.style.background = h[1] >= 0 ? "rgba(234,88,12,0.75)" : "rgba(37,99,235,0.75)";
      track.appendChild(bar);
      row.appendChild(track);
      row.appendChild(el("span", "val", fmt(h[1])));
      list.appendChild(row);
    });
    panel.appendChild(list);
    Array.prototype.forEach.call(box.querySelectorAll(".t.sel"), function (t) { t.classList.remove("sel"); });
    var t = box.querySelector('.t[data-i="' + i + '"]');
    if (t) t.classList.add("sel");
  }
  Array.prototype.forEach.call(document.querySelectorAll("article.prompt"), function (box) {
    var n = +box.getAttribute("data-p"), last = data.prompts[n].tokens.length - 1;
    var text = box.querySelector(".ptext");
    var pinned = null;
    function token(e) {
      var t = e.target.closest ? e.target.closest(".t") : null;
      return t && text.contains(t) ? t : null;
    }
    text.addEventListener("mouseover", function (e) {
      var t = token(e);
      if (t && pinned === null) show(box, +t.getAttribute("data-i"));
    });
    text.addEventListener("mouseleave", function () { if (pinned === null) show(box, last); });
    text.addEventListener("click", function (e) {
      var t = token(e);
      if (!t) return;
      var i = +t.getAttribute("data-i");
      pinned = pinned === i ? null : i;
      box.classList.toggle("pinned", pinned !== null);
      show(box, i);
    });
    Array.prototype.forEach.call(box.querySelectorAll("tr.hrow"), function (row) {
      var positions = (row.getAttribute("data-sources") || "").split(",").filter(Boolean);
      function mark(on) {
        positions.forEach(function (s) {
          var t = text.querySelector('.t[data-i="' + s + '"]');
          if (t) t.classList.toggle("looked", on);
        });
      }
      row.addEventListener("mouseenter", function () { mark(true); });
      row.addEventListener("mouseleave", function () { mark(false); });
    });
    show(box, last);
    // ---- trace --why: clicking a looked-up token shows why the head looked there and what it took
    var why = data.prompts[n].why, whyPanel = box.querySelector(".why");
    if (why && whyPanel) {
      Array.prototype.forEach.call(box.querySelectorAll("tr.hrow .src"), function (src) {
        src.classList.add("clickable");
        src.addEventListener("click", function () {
          var head = src.closest("tr.hrow").getAttribute("data-head"), pos = src.getAttribute("data-pos");
          var w = (why[head] || {})[pos];
          if (!w) return;
          Array.prototype.forEach.call(box.querySelectorAll(".src.sel"), function (t) { t.classList.remove("sel"); });
          src.classList.add("sel");
          whyPanel.textContent = "";
          var top = el("div", "dhead");
          top.appendChild(el("b", "", head + " "));
          top.appendChild(el("span", "", "looked at "));
          top.appendChild(el("span", "tok", visible(data.prompts[n].tokens[+pos]) || "\u200b"));
          top.appendChild(el("span", "dim", " @" + pos + "  attention " + w.a.toFixed(2) + "  score S " + fmt(w.s) +
                             "  S\u0303 " + fmt(w.c) + " (S minus its mean under the pattern: what moves attention)"));
          whyPanel.appendChild(top);
          var table = el("table", "whypairs"), head1 = el("tr");
          ["query component", "key component", "S\u0303", "S"].forEach(function (t) { head1.appendChild(el("th", "", t)); });
          table.appendChild(head1);
          w.pairs.forEach(function (x) {
            var row = el("tr", "whypair");
            row.appendChild(el("td", "", x[0]));
            row.appendChild(el("td", "", x[1]));
            row.appendChild(el("td", "val", fmt(x[2])));
            row.appendChild(el("td", "val dim", fmt(x[3])));
            table.appendChild(row);
          });
          whyPanel.appendChild(table);
          var took = el("div", "whytook small");
          took.appendChild(el("span", "dim", "what it took (context part " + fmt(w.ctx) + ") was written by: "));
          took.appendChild(el("span", "", w.took.map(function (x) { return x[0] + " " + fmt(x[1]); }).join(" \u00b7 ")));
          whyPanel.appendChild(took);
        });
      });
    }
  });
  document.documentElement.setAttribute("data-ready", "1");
})();
