// The timeline editor as a plain DOM element: prompts as blocks on a time axis, the sampler's
// section boundaries under them, one row per prompt for text, and the server's problems inline.
// The storyboard text is the only state: every edit writes it back, and what the text means (cues,
// times, problems, sections, exports) is the server's answer to a debounced check of it, never a
// copy of the rules kept here. Until that answer comes, an edit's own result stands in (`pending`).

import { addCue, editable, removeCue, setCue, writeTime } from "./storyboard_edit.js";
import { injectStyle } from "./storyboard_style.js";

const STEP = 0.5; // seconds per arrow key; Shift for fine steps
const FINE_STEP = 0.1;
const CHECK_DELAY_MS = 150; // typing and dragging ask the server once they pause
const RETRY_MS = 3000; // after the server could not be reached

const snap = (t) => Math.round(t / FINE_STEP) * FINE_STEP;
const roundTenth = (t) => Math.round(t * 10) / 10; // 0.30000000000000004 -> 0.3

export class StoryboardTimeline {
  /**
   * read(): the storyboard text; write(text): store it; settings(): {seconds, fps, sectionFrames,
   * fromSampler, timing}; setDuration(seconds): the editor's own length when no sampler gives one;
   * check(body): the server's answer to POST /histenc/storyboard, as {reply} or {error, retry}.
   */
  constructor({ read, write, settings, setDuration, check }) {
    Object.assign(this, { read, write, settings, setDuration, check });
    injectStyle();
    this.element = el("div", "histenc-sb");
    this.element.addEventListener("keydown", (e) => this.onKey(e));
    this.signature = null;
    this.pendingFocus = null;
    this.message = "";
    this.doc = null; // the server's answer for `checked`, or an edit's stand-in for its own text
    this.wanted = null; // the check the editor needs: JSON of the request body
    this.checked = null; // the check `doc` answers
    this.failure = null; // why the last check got no answer
    this.timeProblem = null; // {index, value, problem}: a typed time the server could not read
    this.version = 0;
  }

  /** Ask the server again when the text or the sampler's settings changed; re-render when anything did. */
  refresh() {
    const settings = this.settings();
    const body = { text: this.read(), seconds: settings.seconds ?? null, fps: settings.fps ?? null,
      section_frames: settings.sectionFrames ?? null, timing: settings.timing ?? null };
    const key = JSON.stringify(body);
    if (key !== this.wanted) this.ask(body, key);
    const signature = JSON.stringify([key, settings.fromSampler, this.message, this.timeProblem, this.version]);
    if (signature !== this.signature) this.render(signature, key);
  }

  /** The doc of the text as it is now (the server's or an edit's), or null while a changed text is checked. */
  get current() {
    return this.doc && this.doc.text === this.read() ? this.doc : null;
  }

  ask(body, key) {
    this.wanted = key;
    clearTimeout(this.timer);
    this.timer = setTimeout(async () => {
      const answer = await this.check(body);
      if (key !== this.wanted) return; // the text moved on; its own check is on its way
      this.failure = answer.error ?? null;
      if (answer.reply) {
        this.doc = { ...answer.reply, text: body.text };
        this.checked = key;
      } else if (this.doc?.text !== body.text) {
        this.doc = { text: body.text, form: null, editable: false, cues: [], problems: [] };
      }
      if (answer.retry) setTimeout(() => this.wanted === key && this.ask(body, key), RETRY_MS);
      this.version++;
      this.refresh();
    }, CHECK_DELAY_MS);
  }

  /** Store an edit's text and doc; `role` names the part to focus afterwards (null: keep the focus as is). */
  edit({ text, index, doc }, role = "block") {
    this.message = "";
    this.timeProblem = null;
    if (text !== this.read()) {
      this.doc = doc;
      this.checked = null; // even a text seen before waits for its own answer again
      this.version++;
      this.write(text);
    }
    if (role && index >= 0) this.pendingFocus = { role, index };
    this.refresh();
    if (this.pendingFocus) this.focusPart(this.pendingFocus); // nothing changed, so no render took it
    this.pendingFocus = null;
  }

  // ---- rendering ----

  render(signature, key) {
    this.signature = signature;
    const settings = this.settings();
    const doc = this.doc ?? { cues: [], problems: [] };
    const state = this.failure ? "failed" : this.checked === key ? "ready" : "checking";
    const focus = this.pendingFocus ?? this.focusedPart();
    this.pendingFocus = null;
    this.duration = settings.seconds;
    const lastT = Math.max(0, ...doc.cues.map((c) => c.t));
    this.span = Math.max(settings.seconds || 0, lastT * 1.05, 1);

    this.element.dataset.state = state; // "ready": everything shown is the server's answer for this text
    this.element.replaceChildren(
      this.toolbar(settings, doc),
      this.axis(doc, settings, state),
      this.rows(doc),
      this.problems(doc, state),
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
    add.disabled = !editable(this.current);
    const importButton = button("Import", "Replace the storyboard with a JSON or text file", () => this.importFile());
    const exportButton = button("Export", "Download the storyboard as JSON", () => this.exportFile());
    exportButton.disabled = !this.current?.exports; // only a storyboard the server reads without problems
    const form = el("span", "histenc-sb-form", doc.form === "json" ? "JSON" : "text");
    form.title = "The storyboard keeps the form it was written in";
    return el("div", "histenc-sb-toolbar", [label("Length (s)", duration), form, add, importButton, exportButton]);
  }

  axis(doc, settings, state) {
    const axis = el("div", "histenc-sb-axis");
    axis.dataset.role = "axis";
    axis.title = "Double-click to add a prompt there" + (doc.schedule_problem ? `\n${doc.schedule_problem}` : "");
    axis.addEventListener("dblclick", (e) => {
      if (e.target === axis) this.addPrompt(this.timeAt(e.clientX, axis));
    });
    for (const t of ticks(this.span)) {
      const tick = el("div", "histenc-sb-tick", writeTime(t));
      tick.style.left = pct(t / this.span);
      axis.append(tick);
    }
    // The sections are the server's cut (schedule_sections), with the prompt each one is sampled with.
    for (const section of doc.schedule?.sections ?? []) {
      const line = el("div", "histenc-sb-boundary");
      line.style.left = pct(section.start_s / this.span);
      const cue = state === "ready" && section.cue !== null ? `, prompt ${section.cue + 1}` : "";
      line.title = `section ${section.index + 1}: ${section.start} - ${section.end}${cue}`;
      line.dataset.role = "boundary";
      axis.append(line);
    }
    if (state === "ready") this.sampled(axis, doc);
    if (settings.seconds) {
      const end = el("div", "histenc-sb-end");
      end.style.left = pct(Math.min(settings.seconds / this.span, 1));
      end.title = doc.end_time ? `end of the video: ${doc.end_time}` : "end of the video";
      axis.append(end);
    }
    doc.cues.forEach((cue, index) => axis.append(this.block(doc, cue, index)));
    this.axisElement = axis;
    return axis;
  }

  // Where the server's timing rule switches prompts (schedule.switches): a marker on the boundary where each
  // prompt's first section starts, and under the blocks a band for the sections sampled with it.
  sampled(axis, doc) {
    const switches = doc.schedule?.switches ?? [];
    const end = doc.schedule?.duration ?? this.duration;
    switches.forEach((sw, i) => {
      const until = switches[i + 1]?.at_s ?? end;
      const cue = doc.cues[sw.cue];
      const what = `prompt ${sw.cue + 1} (written at ${cue?.time ?? sw.t}) is sampled from ${sw.at}`;
      const band = el("div", "histenc-sb-sampled", String(sw.cue + 1));
      band.style.left = pct(sw.at_s / this.span);
      band.style.width = pct(Math.max(until - sw.at_s, 0) / this.span);
      Object.assign(band.dataset, { role: "sampled", cue: String(sw.cue), at: sw.at });
      band.title = `${what} (${doc.schedule.timing})`;
      const marker = el("div", "histenc-sb-switch");
      marker.style.left = pct(sw.at_s / this.span);
      Object.assign(marker.dataset, { role: "switch", cue: String(sw.cue), at: sw.at });
      marker.title = what;
      axis.append(band, marker);
    });
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
    block.title = `${cue.time} ${cue.prompt}\n` +
      "Drag or use ←/→ (Shift: fine) to retime, Enter to edit, Delete to remove";
    block.setAttribute("aria-label", `Prompt ${index + 1} at ${cue.time}: ${cue.prompt || "empty"}`);
    if (cue.problems?.length) block.classList.add("histenc-sb-invalid");
    block.addEventListener("pointerdown", (e) => this.startDrag(e, block, index));
    return block;
  }

  rows(doc) {
    const list = el("div", "histenc-sb-rows");
    doc.cues.forEach((cue, index) => {
      const time = el("input", "histenc-sb-time");
      Object.assign(time, { type: "text", value: cue.time, spellcheck: false });
      Object.assign(time.dataset, { role: "time", index: String(index) });
      time.setAttribute("aria-label", `Time of prompt ${index + 1}`);
      if (this.timeProblem?.index === index) {
        time.value = this.timeProblem.value; // what was typed stays, marked, until the next edit
        time.title = this.timeProblem.problem;
        time.classList.add("histenc-sb-invalid");
      }
      time.addEventListener("change", () => this.retimeFromText(time, index));
      const prompt = el("input", "histenc-sb-prompt");
      Object.assign(prompt, { type: "text", value: cue.prompt, placeholder: "what the video shows from then on" });
      Object.assign(prompt.dataset, { role: "prompt", index: String(index) });
      prompt.setAttribute("aria-label", `Prompt ${index + 1}`);
      prompt.addEventListener("input", () => this.change((d) => setCue(d, index, { prompt: prompt.value }), null));
      const remove = button("×", `Remove prompt ${index + 1}`, () => this.change((d) => removeCue(d, index)));
      remove.dataset.role = "remove";
      const row = el("div", "histenc-sb-row", [time, prompt, remove]);
      if (cue.problems?.length) row.classList.add("histenc-sb-invalid");
      list.append(row);
    });
    return list;
  }

  problems(doc, state) {
    const list = el("ul", "histenc-sb-problems");
    list.dataset.role = "problems";
    list.setAttribute("aria-live", "polite");
    list.setAttribute("aria-busy", String(state === "checking"));
    const lines = [this.message, this.timeProblem?.problem, this.failure, ...doc.problems].filter(Boolean);
    for (const sentence of lines) list.append(el("li", "histenc-sb-problem", sentence));
    if (!this.doc && !lines.length) list.append(el("li", "histenc-sb-ok", "Checking the storyboard…"));
    else if (!lines.length) list.append(el("li", "histenc-sb-ok", "No problems: ready to queue."));
    // The server's notes on a valid storyboard (a prompt no section takes): worth knowing, not blocking.
    for (const note of doc.schedule?.notes ?? []) list.append(el("li", "histenc-sb-note", note));
    return list;
  }

  // ---- editing ----

  /** Apply `makeEdit(doc)` to the current text; nothing happens while a changed text waits for its check. */
  change(makeEdit, role) {
    const doc = this.current;
    if (doc) this.edit(makeEdit(doc), role);
  }

  addPrompt(at) {
    const cues = this.current?.cues ?? [];
    const last = cues.length ? Math.max(...cues.map((c) => c.t)) : 0;
    // Halfway between the last prompt and the end leaves room to drag either way.
    const end = Math.max(this.duration || last + 4, last);
    const t = at ?? (cues.length ? snap((last + end) / 2) : 0);
    this.change((doc) => addCue(doc, roundTenth(t)), "prompt");
  }

  retime(index, t, role = "block") {
    const top = this.duration || Infinity;
    const clamped = roundTenth(Math.min(Math.max(t, 0), top));
    this.change((doc) => setCue(doc, index, { t: clamped }), role);
  }

  /** A typed time is read by the server (parse_time); its sentence marks the field when it is not a time. */
  async retimeFromText(input, index) {
    const value = input.value;
    const text = this.read();
    const answer = await this.check({ time: value });
    const time = answer.reply?.time;
    if (!time || time.problem !== undefined) {
      this.timeProblem = { index, value, problem: time?.problem ?? answer.error };
      this.refresh();
      return;
    }
    if (this.read() !== text) return; // the storyboard changed meanwhile: the prompt may be another one
    const focused = this.focusedPart();
    const follow = focused?.role === "block" && focused.index === index; // Enter went back to the block
    this.retime(index, time.seconds, follow ? "block" : null);
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
      const cue = this.current?.cues[current];
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
    const cue = this.current?.cues[index];
    if (role === "block" && cue) {
      const step = e.shiftKey ? FINE_STEP : STEP;
      if (e.key === "ArrowLeft" || e.key === "ArrowDown") this.retime(index, cue.t - step);
      else if (e.key === "ArrowRight" || e.key === "ArrowUp") this.retime(index, cue.t + step);
      else if (e.key === "Home") this.retime(index, 0);
      else if (e.key === "End") this.retime(index, this.duration || cue.t);
      else if (e.key === "Delete" || e.key === "Backspace") this.change((doc) => removeCue(doc, index));
      else if (e.key === "Enter" || e.key === "F2") this.focusPart({ role: "prompt", index });
      else handled = false;
    } else if ((role === "prompt" || role === "time") && (e.key === "Enter" || e.key === "Escape")) {
      this.focusPart({ role: "block", index }); // leaving a changed time field commits it (its change event)
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
    // While typing, the input keeps what was typed: trailing spaces the text form trims away, and a
    // time not yet committed (the server's answer to an earlier edit can re-render meanwhile).
    const typing = part.role === "prompt" ? part.value?.trim() === target.value.trim() : part.role === "time";
    if (typing && part.value !== undefined) target.value = part.value;
    target.focus({ preventScroll: true });
    if (part.start !== undefined && part.start !== null && target.setSelectionRange) {
      target.setSelectionRange(part.start, part.end);
    }
  }

  // ---- import / export ----

  importFile() {
    const picker = Object.assign(document.createElement("input"),
      { type: "file", accept: ".json,.txt,application/json,text/plain" });
    picker.addEventListener("change", async () => {
      const file = picker.files?.[0];
      if (file) this.importText(await file.text(), file.name);
    });
    picker.click();
  }

  /** Replace the storyboard with an imported file's text when the server reads it as one. */
  async importText(text, name = "the file") {
    const answer = await this.check({ text });
    const doc = answer.reply;
    if (!editable(doc) || !doc.cues.length) {
      const why = answer.error ?? doc.problems[0] ?? "no prompts";
      this.message = `import: ${name} is not a storyboard (${why}); nothing was changed.`;
      this.refresh();
      return false;
    }
    this.edit({ text, index: 0, doc: { ...doc, text, pending: true } }); // checked again with the video's length
    return true;
  }

  /** Download the server's JSON form of the storyboard (Storyboard.to_json). */
  exportFile() {
    const json = this.current?.exports?.json;
    if (!json) return;
    const blob = new Blob([json + "\n"], { type: "application/json" });
    const link = Object.assign(document.createElement("a"),
      { href: URL.createObjectURL(blob), download: "storyboard.json" });
    link.click();
    setTimeout(() => URL.revokeObjectURL(link.href), 1000);
  }
}

// ---- small helpers ----

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
