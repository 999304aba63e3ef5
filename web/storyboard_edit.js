// Edits of a written storyboard that keep the form the user chose: text stays text (comments, blank
// lines and untouched lines byte for byte), JSON stays JSON (invalid entries left where they are).
// Every function takes the widget's text and returns the new text plus where the edited cue went.

import { formatTime, pyDumps, readStoryboard } from "./storyboard_rules.js";

/** Whether the editor can change this text (JSON that does not parse is fixed in the text first). */
export function editable(doc) {
  return doc.form === "text" || (doc.form === "json" && doc.items !== undefined);
}

/** Set cue `index` to {t, prompt} (either may be left out); cues are kept in time order. */
export function setCue(text, index, { t, prompt }) {
  const doc = readStoryboard(text);
  const cue = doc.cues[index];
  if (!cue || !editable(doc)) return { text, index };
  const changed = { ...cue, t: t ?? cue.t, prompt: prompt ?? cue.prompt, edited: true };
  const cues = doc.cues.map((c, i) => (i === index ? changed : c));
  return write(doc, cues, t !== undefined);
}

/** Add a cue after the last one (then sorted into time order); returns its index. */
export function addCue(text, t, prompt = "") {
  const doc = readStoryboard(text);
  if (!editable(doc)) return { text, index: -1 };
  const fresh = { t, prompt, edited: true, slot: null };
  return write(doc, [...doc.cues, fresh], true);
}

/** Remove cue `index`. */
export function removeCue(text, index) {
  const doc = readStoryboard(text);
  if (!doc.cues[index] || !editable(doc)) return { text, index: -1 };
  if (doc.form === "text") {
    const slot = doc.cues[index].slot;
    const lines = [...doc.lines];
    const breaks = [...doc.breaks];
    lines.splice(slot, 1);
    breaks.splice(slot < breaks.length ? slot : slot - 1, 1);
    return { text: joinLines(lines, breaks), index: Math.min(index, doc.cues.length - 2) };
  }
  const items = [...doc.items];
  items.splice(doc.cues[index].slot, 1);
  return { text: dumpJson(doc, items), index: Math.min(index, doc.cues.length - 2) };
}

/** The storyboard as JSON in the backend's Storyboard.to_json form (the file an export writes). */
export function exportJson(text) {
  const doc = readStoryboard(text);
  const entries = doc.cues.map((c) => `{"t": ${pyFloat(c.t)}, "prompt": ${JSON.stringify(c.prompt)}}`);
  const list = `[${entries.join(", ")}]`;
  const globalPrompt = doc.globalPrompt ? doc.globalPrompt.trim() : "";
  return globalPrompt ? `{"global": ${JSON.stringify(globalPrompt)}, "prompts": ${list}}` : list;
}

// Places `cues` into the document's cue slots (sorted by time when `sort`), rewriting only the
// slots whose content changed, and reports the new index of the edited cue.
function write(doc, cues, sort) {
  const order = cues.map((c, i) => i);
  if (sort) order.sort((a, b) => cues[a].t - cues[b].t); // stable: equal times keep their order
  const placed = order.map((i) => cues[i]);
  const index = placed.findIndex((c) => c.edited);
  const slots = doc.cues.map((c) => c.slot);
  return doc.form === "text" ? { text: writeText(doc, placed, slots), index } : { text: writeJson(doc, placed, slots), index };
}

function writeText(doc, placed, slots) {
  const lines = [...doc.lines];
  const breaks = [...doc.breaks];
  const untouched = new Map(doc.cues.map((c) => [c, doc.lines[c.slot]]));
  if (placed.length > slots.length) {
    // A new cue's line goes right after the last cue line (or at the end of an empty storyboard).
    const at = slots.length ? slots[slots.length - 1] + 1 : lines.length;
    if (lines.length === 1 && lines[0].trim() === "") {
      lines[0] = "";
      slots.push(0);
    } else {
      lines.splice(at, 0, "");
      breaks.splice(at - 1, 0, "\n");
      slots.push(at);
    }
  }
  placed.forEach((cue, i) => {
    lines[slots[i]] = untouched.get(cue) ?? cueLine(cue);
  });
  return joinLines(lines, breaks);
}

function cueLine(cue) {
  const prompt = String(cue.prompt).replace(/[\r\n\v\f\x1c-\x1e\x85\u2028\u2029]+/g, " ");
  return prompt ? `${formatTime(cue.t)} ${prompt}` : formatTime(cue.t);
}

function joinLines(lines, breaks) {
  return lines.map((line, i) => line + (i < lines.length - 1 ? breaks[i] ?? "\n" : "")).join("");
}

function writeJson(doc, placed, slots) {
  const items = [...doc.items];
  const untouched = new Set(doc.cues);
  if (placed.length > slots.length) {
    const at = slots.length ? slots[slots.length - 1] + 1 : items.length;
    items.splice(at, 0, null);
    slots.push(at);
  }
  placed.forEach((cue, i) => {
    const item = cue.slot === null || cue.slot === undefined ? undefined : doc.items[cue.slot];
    if (untouched.has(cue)) {
      items[slots[i]] = item;
      return;
    }
    // Keep a time written as "m:ss" text in that form; numbers stay numbers.
    const t = item && typeof item.t === "string" ? formatTime(cue.t) : cue.t;
    items[slots[i]] = { ...(item ?? {}), t, prompt: cue.prompt };
  });
  return dumpJson(doc, items);
}

function dumpJson(doc, items) {
  const data = Array.isArray(doc.data) ? items : { ...doc.data, prompts: items };
  if (doc.multiline) return JSON.stringify(data, null, 2);
  return pyDumps(data, false);
}

function pyFloat(t) {
  return Number.isInteger(t) ? `${t}.0` : String(t);
}
