// Unit tests of the editor's edits: `node --test tests/web/` (no npm packages needed). Each edit starts
// from the server's own reading of the text (tests/web/describe.py runs describe_storyboard), and the
// doc an edit leaves behind must agree with the server's reading of the text it wrote.
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { existsSync } from "node:fs";
import { test } from "node:test";
import { fileURLToPath } from "node:url";

import { addCue, editable, removeCue, setCue, writePrompt, writeTime } from "../../web/storyboard_edit.js";

const REPO = fileURLToPath(new URL("../../", import.meta.url));
const VENV_PYTHON = `${REPO}.cache/venv/bin/python`;
const PYTHON = process.env.HISTENC_PYTHON || (existsSync(VENV_PYTHON) ? VENV_PYTHON : "python3");

// Every text the tests read or expect, described by the server in one run.
const TEXTS = [
  "# scene one\r\n0:00 a lighthouse\r\n\r\n12.5s - a storm\r\n0:30 gulls\n",
  "# scene one\r\n0:00 a lighthouse\r\n\r\n0:14 a storm\r\n0:30 gulls\n",
  "0:00 a\n# keep me\n0:10 b\n0:20 c",
  "0:10 b\n# keep me\n0:15 a\n0:20 c",
  "0:00 a\n0:10 b",
  "0:00 a\n0:00 b",
  "0:00 a\n0:10 a ship ",
  "0:00 a\n0:20 c\n",
  "0:00 a\n0:10 b\n0:20 c\n",
  "",
  "0:00",
  "0:00 a\n0:10 b\n0:20 c",
  "0:10 b\n0:20 c",
  '{"global": "film", "prompts": [{"t": "0:00", "prompt": "a"}, 7, {"t": 9, "prompt": "b"}]}',
  '{"global": "film", "prompts": [{"t": "0:00", "prompt": "a"}, 7, {"t": 4.5, "prompt": "b"}]}',
  '[\n  {"t": 0, "prompt": "a"}\n]',
  '[{"t": 0, "prompt": "a"}, {"t": 2, "prompt": "b"}]',
  '[{"t": 2, "prompt": "b"}]',
  '[{"t": 0, "prompt": "a"',
  "0:10 b\n0:20 c\n",
  "0:00 c\n0:10 b\n",
  '{"global": 5, "prompts": []}',
  ...Object.values(PROMPT_LINES()).map((line) => `0:00 a\n${line}`),
];

// Prompts that start like the separator the text form drops after a time, and the line the editor writes.
function PROMPT_LINES() {
  return {
    "- a list item": "0:10 - - a list item",
    "-1 degree night": "0:10 -1 degree night",
    ": colon first": "0:10 - : colon first",
    "| bar": "0:10 - | bar",
    ", comma": "0:10 - , comma",
    "– dash": "0:10 - – dash",
    "-": "0:10 - -",
    ":-) a smile": "0:10 :-) a smile",
  };
}

const DOCS = new Map();
const run = spawnSync(PYTHON, [`${REPO}tests/web/describe.py`], { input: JSON.stringify(TEXTS), encoding: "utf8" });
assert.equal(run.status, 0, `${PYTHON} tests/web/describe.py failed: ${run.stderr}`);
JSON.parse(run.stdout).forEach((doc, i) => DOCS.set(TEXTS[i], { ...doc, text: TEXTS[i] }));

/** The server's doc of `text` (the editor keeps the text it asked about beside the answer). */
function doc(text) {
  assert.ok(DOCS.has(text), `add ${JSON.stringify(text)} to TEXTS`);
  return DOCS.get(text);
}

/** An edit's stand-in doc agrees with the server's reading of the text the edit wrote. */
function agrees(result) {
  const server = doc(result.text);
  const shape = (d) => ({ form: d.form, lines: d.lines, breaks: d.breaks,
    cues: d.cues.map((c) => ({ t: c.t, time: c.time, prompt: c.prompt.trim(), slot: c.slot })) });
  assert.deepEqual(shape(result.doc), shape(server));
  assert.equal(result.doc.text, result.text);
}

test("the editor writes times in the text form's m:ss syntax", () => {
  assert.equal(writeTime(62.5), "1:02.5");
  assert.equal(writeTime(4), "0:04");
  assert.equal(writeTime(4.1), "0:04.1");
  assert.equal(writeTime(0.3), "0:00.3");
  assert.equal(writeTime(3723.25), "62:03.25");
});

test("a retime in the text form rewrites only that line and keeps comments and line breaks", () => {
  const result = setCue(doc(TEXTS[0]), 1, { t: 14 });
  assert.equal(result.text, "# scene one\r\n0:00 a lighthouse\r\n\r\n0:14 a storm\r\n0:30 gulls\n");
  assert.equal(result.index, 1);
  assert.equal(result.doc.pending, true);
  agrees(result);
});

test("a retime past a neighbour keeps the prompts in time order and follows the moved cue", () => {
  const result = setCue(doc("0:00 a\n# keep me\n0:10 b\n0:20 c"), 0, { t: 15 });
  assert.equal(result.text, "0:10 b\n# keep me\n0:15 a\n0:20 c");
  assert.equal(result.index, 1);
  agrees(result);
});

test("equal times stay in the order they were, so the server's 'repeats the time' sentence shows", () => {
  const result = setCue(doc("0:00 a\n0:10 b"), 1, { t: 0 });
  assert.equal(result.text, "0:00 a\n0:00 b");
  agrees(result);
  assert.deepEqual(doc(result.text).problems,
    ["storyboard line 2 repeats the time 0:00 of line 1; give each prompt its own time."]);
  assert.deepEqual(doc(result.text).cues[1].problems, doc(result.text).problems);
});

test("editing a prompt leaves its time and the other lines alone", () => {
  const result = setCue(doc("0:00 a\n0:10 b"), 1, { prompt: "a ship " });
  assert.equal(result.text, "0:00 a\n0:10 a ship ");
  assert.equal(result.index, 1);
  agrees(result);
  assert.equal(doc(result.text).cues[1].prompt, "a ship");
});

test("add puts a new line after the last prompt, sorted by time; remove drops the line", () => {
  let result = addCue(doc("0:00 a\n0:20 c\n"), 10, "b");
  assert.equal(result.text, "0:00 a\n0:10 b\n0:20 c\n");
  assert.equal(result.index, 1);
  agrees(result);
  result = addCue(doc(""), 0);
  assert.equal(result.text, "0:00");
  agrees(result);
  assert.deepEqual(doc(result.text).problems,
    ["storyboard line 1 at 0:00 has no prompt text; write what the video shows then."]);
  result = removeCue(doc("0:00 a\n0:10 b\n0:20 c"), 2);
  assert.equal(result.text, "0:00 a\n0:10 b");
  assert.equal(result.index, 1);
  agrees(result);
  result = removeCue(doc("0:00 a\n0:10 b\n0:20 c"), 0);
  assert.equal(result.text, "0:10 b\n0:20 c");
  agrees(result);
});

test("edits chain on an edit's own doc before the server has read the new text", () => {
  const first = addCue(doc("0:00 a\n0:20 c\n"), 10, "b");
  const second = removeCue(first.doc, 0);
  assert.equal(second.text, "0:10 b\n0:20 c\n");
  agrees(second);
  const third = setCue(second.doc, 1, { t: 0 });
  assert.equal(third.text, "0:00 c\n0:10 b\n");
  assert.equal(third.index, 0);
  agrees(third);
});

test("the JSON form stays JSON, keeping string times and invalid entries in place", () => {
  const text = TEXTS[13];
  const result = setCue(doc(text), 1, { t: 4.5 });
  assert.equal(result.text, TEXTS[14]);
  agrees(result);
  const added = addCue(doc('[\n  {"t": 0, "prompt": "a"}\n]'), 2, "b").text;
  assert.deepEqual(JSON.parse(added), [{ t: 0, prompt: "a" }, { t: 2, prompt: "b" }]);
  assert.ok(added.includes("\n  "), "pretty-printed JSON stays pretty-printed");
  const removed = removeCue(doc('[{"t": 0, "prompt": "a"}, {"t": 2, "prompt": "b"}]'), 0);
  assert.equal(removed.text, '[{"t": 2, "prompt": "b"}]');
  agrees(removed);
});

test("what the server cannot read as a list of prompts is not edited", () => {
  for (const broken of ['[{"t": 0, "prompt": "a"', '{"global": 5, "prompts": []}']) {
    assert.equal(editable(doc(broken)), false);
    assert.equal(setCue(doc(broken), 0, { t: 1 }).text, broken);
    assert.equal(addCue(doc(broken), 1, "x").text, broken);
    assert.equal(addCue(doc(broken), 1, "x").index, -1);
  }
  assert.equal(editable(null), false);
});

test("a prompt keeps its own leading separator: the server reads back what was typed", () => {
  for (const [prompt, line] of Object.entries(PROMPT_LINES())) {
    const result = setCue(doc("0:00 a\n0:10 b"), 1, { prompt });
    assert.equal(result.text, `0:00 a\n${line}`);
    agrees(result);
    assert.equal(doc(result.text).cues[1].prompt, prompt);
    assert.deepEqual(doc(result.text).problems, []);
  }
  assert.equal(writePrompt("a storm"), "a storm");
});
