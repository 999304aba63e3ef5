// The timeline editor as a plain DOM element: prompts as blocks on a time axis, the sampler's
// section boundaries under them, one row per prompt for text, and the backend's problems inline.
// It owns no state of its own: every render reads the storyboard text, every edit writes it back.

import { addCue, editable, exportJson, removeCue, setCue } from "./storyboard_edit.js";
import { formatTime, parseTime, readStoryboard, scheduleSections } from "./storyboard_rules.js";
import { injectStyle } from "./storyboard_style.js";

const STEP = 0.5; // seconds per arrow key; Shift for fine steps
const FINE_STEP = 0.1;

const snap = (t) => Math.round(t / FINE_STEP) * FINE_STEP;
const roundTenth = (t) => Math.round(t * 10) / 10; // 0.30000000000000004 -> 0.3

export class StoryboardTimeline {
  /**
   * read(): the storyboard text; write(text): store it; settings(): {seconds, fps, sectionFrames,
   * fromSampler}; setDuration(seconds): the editor's own length when no sampler gives one.
   */
  constructor({ read, write, settings, setDuration }) {
    Object.assign(this, { read, write, settings, setDuration });
    injectStyle();
    this.element = el("div", "histenc-sb");
    this.element.addEventListener("keydown", (e) => this.onKey(e));
    this.signature = null;
    this.pendingFocus = null;
    this.message = "";
  }

  /** Re-render when the text or the sampler's settings changed since the last render. */
  refresh() {
    const signature = JSON.stringify([this.read(), this.settings(), this.message]);
    if (signature !== this.signature) this.render(signature);
  }

  /** Store an edit's text; `role` names the part to focus afterwards (null: keep the focus as is). */
  edit({ text, index }, role = "block") {
    this.message = "";
    if (text !== this.read()) this.write(text);
    if (role && index >= 0) this.pendingFocus = { role, index };
    this.refresh();
    if (this.pendingFocus) this.focusPart(this.pendingFocus); // nothing changed, so no render took it
    this.pendingFocus = null;
  }

  // ---- rendering ----

  render(signature) {
    this.signature = signature;
    const text = this.read();
    const settings = this.settings();
    const doc = readStoryboard(text, settings.seconds);
    const focus = this.pendingFocus ?? this.focusedPart();
    this.pendingFocus = null;
    this.doc = doc;
    this.duration = settings.seconds;
    const lastT = Math.max(0, ...doc.cues.map((c) => c.t));
    this.span = Math.max(settings.seconds || 0, lastT * 1.05, 1);

    this.element.replaceChildren(
      this.toolbar(settings, doc),
      this.axis(doc, settings),
      this.rows(doc),
      this.problems(doc),
    );
    this.restoreFocus(focus);
  }

  toolbar(settings, doc) {
    const duration = el("input", "histenc-sb-duration");
    Object.assign(duration, { type: "number", min: "0.1", step: "0.1", value: String(settings.seconds ?? "") });
    duration.dataset.role = "duration";
    duration.setAttribute("aria-label", "Video length in seconds");
    if (settings.fromSampler) {
      duration.disabled = true;
      duration.title = "Set by the connected Long Video Sampler's seconds";
    }
    duration.addEventListener("change", () => {
      const value = Number(duration.value);
      if (Number.isFinite(value) && value > 0) this.setDuration(value);
      this.refresh();
    });
    const add = button("+ Prompt", "Add a prompt after the last one", () => this.addPrompt());
    add.dataset.role = "add";
    add.disabled = !editable(doc);
    const importButton = button("Import", "Replace the storyboard with a JSON or text file", () => this.importFile());
    const exportButton = button("Export", "Download the storyboard as JSON", () => this.exportFile());
    exportButton.disabled = !doc.cues.length;
    const form = el("span", "histenc-sb-form", doc.form === "json" ? "JSON" : "text");
    form.title = "The storyboard keeps the form it was written in";
    return el("div", "histenc-sb-toolbar", [label("Length (s)", duration), form, add, importButton, exportButton]);
  }

  axis(doc, settings) {
    const axis = el("div", "histenc-sb-axis");
    axis.dataset.role = "axis";
    axis.title = "Double-click to add a prompt there";
    axis.addEventListener("dblclick", (e) => {
      if (e.target === axis) this.addPrompt(this.timeAt(e.clientX, axis));
    });
    for (const t of ticks(this.span)) {
      const tick = el("div", "histenc-sb-tick", formatTime(t));
      tick.style.left = pct(t / this.span);
      axis.append(tick);
    }
    const schedule = settings.fps && settings.sectionFrames && settings.seconds
      ? scheduleSections(settings.seconds, settings.fps, settings.sectionFrames) : null;
    for (const section of schedule?.sections ?? []) {
      const line = el("div", "histenc-sb-boundary");
      line.style.left = pct(section.startS / this.span);
      line.title = `section ${section.index + 1}: ${formatTime(section.startS)} - ${formatTime(section.endS)}`;
      axis.append(line);
    }
    if (settings.seconds) {
      const end = el("div", "histenc-sb-end");
      end.style.left = pct(Math.min(settings.seconds / this.span, 1));
      end.title = `end of the video: ${formatTime(settings.seconds)}`;
      axis.append(end);
    }
    doc.cues.forEach((cue, index) => axis.append(this.block(doc, cue, index)));
    this.axisElement = axis;
    return axis;
  }

  block(doc, cue, index) {
    const next = doc.cues[index + 1];
    const until = next && next.t > cue.t ? next.t : Math.max(this.duration || 0, cue.t);
    const block = el("button", "histenc-sb-block", cue.prompt || "(empty)");
    block.type = "button";
    block.dataset.role = "block";
    block.dataset.index = String(index);
    block.style.left = pct(Math.max(cue.t, 0) / this.span);
    block.style.width = pct(Math.max(until - cue.t, 0) / this.span);
    block.style.top = `${22 + (index % 2) * 20}px`; // alternate rows so blocks at one time stay visible
    block.title = `${formatTime(cue.t)} ${cue.prompt}\nDrag or use ←/→ (Shift: fine) to retime, Enter to edit, Delete to remove`;
    block.setAttribute("aria-label", `Prompt ${index + 1} at ${formatTime(cue.t)}: ${cue.prompt || "empty"}`);
    if (problemsOf(doc, cue).length) block.classList.add("histenc-sb-invalid");
    block.addEventListener("pointerdown", (e) => this.startDrag(e, block, index));
    return block;
  }

  rows(doc) {
    const list = el("div", "histenc-sb-rows");
    doc.cues.forEach((cue, index) => {
      const time = el("input", "histenc-sb-time");
      Object.assign(time, { type: "text", value: formatTime(cue.t), spellcheck: false });
      Object.assign(time.dataset, { role: "time", index: String(index) });
      time.setAttribute("aria-label", `Time of prompt ${index + 1}`);
      time.addEventListener("change", () => this.retimeFromText(time, index));
      const prompt = el("input", "histenc-sb-prompt");
      Object.assign(prompt, { type: "text", value: cue.prompt, placeholder: "what the video shows from then on" });
      Object.assign(prompt.dataset, { role: "prompt", index: String(index) });
      prompt.setAttribute("aria-label", `Prompt ${index + 1}`);
      prompt.addEventListener("input", () => this.edit(setCue(this.read(), index, { prompt: prompt.value }), null));
      const remove = button("×", `Remove prompt ${index + 1}`, () => this.edit(removeCue(this.read(), index)));
      remove.dataset.role = "remove";
      const row = el("div", "histenc-sb-row", [time, prompt, remove]);
      if (problemsOf(doc, cue).length) row.classList.add("histenc-sb-invalid");
      list.append(row);
    });
    return list;
  }

  problems(doc) {
    const list = el("ul", "histenc-sb-problems");
    list.dataset.role = "problems";
    list.setAttribute("aria-live", "polite");
    const lines = this.message ? [this.message, ...doc.problems] : doc.problems;
    for (const sentence of lines) list.append(el("li", "histenc-sb-problem", sentence));
    if (!lines.length) list.append(el("li", "histenc-sb-ok", "No problems: ready to queue."));
    return list;
  }

  // ---- editing ----

  addPrompt(at) {
    const cues = this.doc.cues;
    const last = cues.length ? Math.max(...cues.map((c) => c.t)) : 0;
    // Halfway between the last prompt and the end leaves room to drag either way.
    const end = Math.max(this.duration || last + 4, last);
    const t = at ?? (cues.length ? snap((last + end) / 2) : 0);
    this.edit(addCue(this.read(), roundTenth(t)), "prompt");
  }

  retime(index, t) {
    const top = this.duration || Infinity;
    const clamped = roundTenth(Math.min(Math.max(t, 0), top));
    this.edit(setCue(this.read(), index, { t: clamped }));
  }

  retimeFromText(input, index) {
    try {
      this.retime(index, parseTime(input.value));
    } catch (err) {
      input.classList.add("histenc-sb-invalid");
      input.title = err.message;
    }
  }

  timeAt(clientX, axis) {
    const rect = axis.getBoundingClientRect();
    return snap(((clientX - rect.left) / rect.width) * this.span);
  }

  startDrag(event, block, index) {
    if (event.button !== 0) return;
    event.preventDefault();
    event.stopPropagation(); // the canvas would start dragging the node
    block.focus();
    const startX = event.clientX;
    let current = index;
    let moved = false;
    const move = (e) => {
      if (!moved && Math.abs(e.clientX - startX) < 3) return;
      moved = true;
      const t = this.timeAt(e.clientX, this.axisElement); // the axis of the latest render
      const cue = this.doc.cues[current];
      if (cue && t !== cue.t) {
        this.retime(current, t);
        current = this.pendingIndex ?? current;
      }
    };
    const up = () => {
      window.removeEventListener("pointermove", move, true);
      window.removeEventListener("pointerup", up, true);
      this.focusPart({ role: "block", index: current });
    };
    // Listening on window: each retime re-renders, which replaces the block under the pointer.
    window.addEventListener("pointermove", move, true);
    window.addEventListener("pointerup", up, true);
  }

  get pendingIndex() {
    return this.lastFocus?.role === "block" ? this.lastFocus.index : null;
  }

  onKey(e) {
    const role = e.target.dataset?.role;
    const index = Number(e.target.dataset?.index);
    let handled = true;
    const cue = this.doc?.cues[index];
    if (role === "block" && cue) {
      const step = e.shiftKey ? FINE_STEP : STEP;
      if (e.key === "ArrowLeft" || e.key === "ArrowDown") this.retime(index, cue.t - step);
      else if (e.key === "ArrowRight" || e.key === "ArrowUp") this.retime(index, cue.t + step);
      else if (e.key === "Home") this.retime(index, 0);
      else if (e.key === "End") this.retime(index, this.duration || cue.t);
      else if (e.key === "Delete" || e.key === "Backspace") this.edit(removeCue(this.read(), index));
      else if (e.key === "Enter" || e.key === "F2") this.focusPart({ role: "prompt", index });
      else handled = false;
    } else if ((role === "prompt" || role === "time") && (e.key === "Enter" || e.key === "Escape")) {
      if (role === "time") this.retimeFromText(e.target, index);
      this.focusPart({ role: "block", index });
    } else {
      handled = e.key === "Delete" || e.key === "Backspace"; // typing, never the canvas's node delete
    }
    if (handled && !(e.ctrlKey || e.metaKey)) {
      // Keeps ComfyUI's window-level shortcuts (Delete removes the selected node) out of the editor.
      e.stopPropagation();
      if (role === "block") e.preventDefault();
    }
  }

  // ---- focus kept across re-renders ----

  focusedPart() {
    const active = document.activeElement;
    if (!active || !this.element.contains(active) || !active.dataset.role) return null;
    return { role: active.dataset.role, index: Number(active.dataset.index), value: active.value,
      start: active.selectionStart, end: active.selectionEnd };
  }

  restoreFocus(part) {
    this.lastFocus = part;
    if (part) this.focusPart(part);
  }

  focusPart(part) {
    this.lastFocus = part;
    const selector = Number.isFinite(part.index) ? `[data-role="${part.role}"][data-index="${part.index}"]`
      : `[data-role="${part.role}"]`;
    const target = this.element.querySelector(selector) ?? this.element.querySelector(`[data-role="${part.role}"]`);
    if (!target) return;
    // While typing, the input keeps what was typed (trailing spaces the text form trims away).
    if (part.role === "prompt" && part.value !== undefined && part.value.trim() === target.value) target.value = part.value;
    target.focus({ preventScroll: true });
    if (part.start !== undefined && part.start !== null && target.setSelectionRange) {
      target.setSelectionRange(part.start, part.end);
    }
  }

  // ---- import / export ----

  importFile() {
    const picker = Object.assign(document.createElement("input"), { type: "file", accept: ".json,.txt,application/json,text/plain" });
    picker.addEventListener("change", async () => {
      const file = picker.files?.[0];
      if (file) this.importText(await file.text(), file.name);
    });
    picker.click();
  }

  /** Replace the storyboard with an imported file's text when it can be read. */
  importText(text, name = "the file") {
    const doc = readStoryboard(text);
    if (!editable(doc) || !doc.cues.length) {
      this.message = `import: ${name} is not a storyboard (${doc.problems[0] ?? "no prompts"}); nothing was changed.`;
      this.refresh();
      return false;
    }
    this.edit({ text, index: 0 });
    return true;
  }

  exportFile() {
    const blob = new Blob([exportJson(this.read()) + "\n"], { type: "application/json" });
    const link = Object.assign(document.createElement("a"), { href: URL.createObjectURL(blob), download: "storyboard.json" });
    link.click();
    setTimeout(() => URL.revokeObjectURL(link.href), 1000);
  }
}

// ---- small helpers ----

function problemsOf(doc, cue) {
  return doc.problems.filter((s) => s.startsWith(`storyboard ${cue.where} `) || s.startsWith(`storyboard ${cue.where}:`));
}

function ticks(span) {
  const steps = [1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800];
  const step = steps.find((s) => span / s <= 8) ?? 3600;
  const out = [];
  for (let t = 0; t <= span + 1e-9; t += step) out.push(t);
  return out;
}

function pct(fraction) {
  return `${(fraction * 100).toFixed(4)}%`;
}

function el(tag, className, content) {
  const node = document.createElement(tag);
  node.className = className;
  if (Array.isArray(content)) node.append(...content);
  else if (content !== undefined) node.textContent = content;
  return node;
}

function button(text, title, onClick) {
  const node = el("button", "histenc-sb-button", text);
  node.type = "button";
  node.title = title;
  node.setAttribute("aria-label", title);
  node.addEventListener("click", onClick);
  return node;
}

function label(text, input) {
  return el("label", "histenc-sb-label", [text + " ", input]);
}
