// ComfyUI extension: gives every Storyboard node (HistEncStoryboard) a timeline editor under its
// `storyboard` text. The text widget stays the one source of truth (saved, queued and parsed by the
// backend as before); the editor only reads and rewrites it, so workflows work without this file.
// What the text means is asked of the server (POST /histenc/storyboard, histenc_nodes/storyboard.py).

import { api } from "../../scripts/api.js";
import { app } from "../../scripts/app.js";
import { StoryboardTimeline } from "./storyboard_timeline.js";

const STORYBOARD_NODE = "HistEncStoryboard";
const SAMPLER_NODE = "HistEncLongVideoSampler";
const DURATION_PROPERTY = "histenc_seconds"; // the editor's own length when no sampler is linked
const DEFAULT_SECONDS = 60;
const CHECK_ROUTE = "/histenc/storyboard"; // fetchApi adds ComfyUI's /api prefix

app.registerExtension({
  name: "histenc.StoryboardEditor",
  nodeCreated(node) {
    if (node.comfyClass === STORYBOARD_NODE) attachEditor(node);
  },
});

function attachEditor(node) {
  const textWidget = node.widgets?.find((w) => w.name === "storyboard");
  if (!textWidget) return;
  node.properties ??= {};
  const timeline = new StoryboardTimeline({
    read: () => String(textWidget.value ?? ""),
    write: (text) => {
      textWidget.value = text; // the textarea shows it and the callback tells ComfyUI it changed
      node.graph?.setDirtyCanvas?.(true, false);
    },
    settings: () => ({ ...samplerSettings(node), timing: timingOf(node) }),
    setDuration: (seconds) => {
      node.properties[DURATION_PROPERTY] = seconds;
    },
    check: checkStoryboard,
  });
  const widget = node.addDOMWidget("storyboard_timeline", "histenc_storyboard_timeline", timeline.element, {
    serialize: false, // never part of the saved widget values or the queued prompt
    hideOnZoom: true,
    getMinHeight: () => 200,
  });
  widget.serialize = false;
  node.histencTimeline = timeline;

  // The text can change under the editor (typing in the textarea, loading a workflow, undo) and so
  // can the linked sampler's settings; a cheap comparison each frame the node is drawn catches all.
  const draw = node.onDrawForeground;
  node.onDrawForeground = function (...args) {
    timeline.element.dataset.node = String(node.id); // the id is only final once a workflow is configured
    timeline.refresh();
    return draw?.apply(this, args);
  };
  textWidget.element?.addEventListener("input", () => timeline.refresh());
  // Nodes drawn as Vue components (the "Nodes 2.0" mode) skip onDrawForeground: a slow poll covers them.
  const poll = setInterval(() => timeline.element.isConnected && timeline.refresh(), 500);
  const removed = node.onRemoved;
  node.onRemoved = function (...args) {
    clearInterval(poll);
    return removed?.apply(this, args);
  };
  timeline.element.dataset.node = String(node.id);
  const size = node.computeSize();
  node.setSize([Math.max(node.size[0], 460, size[0]), Math.max(node.size[1], size[1])]);
  timeline.refresh();
}

/**
 * The server's reading of a storyboard (see histenc.longvideo.storyboard.storyboard_request): {reply}
 * on success, else {error: one sentence, retry: whether asking again later may help}.
 */
async function checkStoryboard(body) {
  let response;
  try {
    response = await api.fetchApi(CHECK_ROUTE, { method: "POST", headers: { "Content-Type": "application/json" },
      body: JSON.stringify(body) });
  } catch (err) {
    return { error: `the storyboard check could not reach the ComfyUI server (${err.message}); ` +
      "it is asked again shortly.", retry: true };
  }
  const reply = await response.json().catch(() => null);
  if (response.ok && reply) return { reply };
  if (reply?.error) return { error: reply.error, retry: false };
  return { error: `the server answered the storyboard check with HTTP ${response.status}; restart ComfyUI if the ` +
    "pack was just updated (the check needs its route).", retry: response.status >= 500 };
}

/** The node's `timing` choice (which prompt a section gets), or null for the server's default. */
function timingOf(node) {
  const value = node.widgets?.find((w) => w.name === "timing")?.value;
  return typeof value === "string" && value ? value : null;
}

/** Length, fps and section length from the Long Video Sampler the storyboard feeds, if any. */
function samplerSettings(node) {
  const sampler = linkedSampler(node);
  const seconds = sampler ? widgetNumber(sampler, "seconds") : null;
  if (sampler && seconds) {
    return { seconds, fps: widgetNumber(sampler, "fps"), sectionFrames: widgetNumber(sampler, "section_frames"),
      fromSampler: true };
  }
  const own = Number(node.properties?.[DURATION_PROPERTY]);
  return { seconds: own > 0 ? own : DEFAULT_SECONDS, fps: sampler ? widgetNumber(sampler, "fps") : null,
    sectionFrames: sampler ? widgetNumber(sampler, "section_frames") : null, fromSampler: false };
}

function linkedSampler(node) {
  const graph = node.graph;
  for (const id of node.outputs?.[0]?.links ?? []) {
    const link = graph?.links?.get?.(id) ?? graph?.links?.[id];
    const target = link ? graph.getNodeById(link.target_id) : null;
    if (target?.comfyClass === SAMPLER_NODE) return target;
  }
  return null;
}

// A widget's number, or null when another node drives that input (its value is unknown here).
function widgetNumber(node, name) {
  if (node.inputs?.find((i) => i.name === name)?.link != null) return null;
  const value = Number(node.widgets?.find((w) => w.name === name)?.value);
  return Number.isFinite(value) && value > 0 ? value : null;
}
