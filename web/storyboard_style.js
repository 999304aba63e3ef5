// Styles of the storyboard editor, added once per page; colours come from ComfyUI's theme variables.

const CSS = `
.histenc-sb { display: flex; flex-direction: column; gap: 6px; font: 12px sans-serif; color: var(--input-text, #ddd);
  box-sizing: border-box; width: 100%; height: 100%; overflow: auto; padding: 2px; }
.histenc-sb-toolbar { display: flex; gap: 6px; align-items: center; flex-wrap: wrap; }
.histenc-sb-label { display: flex; gap: 4px; align-items: center; }
.histenc-sb-duration { width: 64px; }
.histenc-sb-form { opacity: 0.6; margin-right: auto; }
.histenc-sb input, .histenc-sb-button { background: var(--comfy-input-bg, #222); color: var(--input-text, #ddd);
  border: 1px solid var(--border-color, #555); border-radius: 4px; padding: 2px 6px; font: inherit; }
.histenc-sb-button { cursor: pointer; }
.histenc-sb-button:disabled, .histenc-sb input:disabled { opacity: 0.5; cursor: default; }
.histenc-sb-axis { position: relative; height: 78px; flex: none; border: 1px solid var(--border-color, #555);
  border-radius: 4px; background: var(--comfy-input-bg, #1a1a1a); overflow: hidden; }
.histenc-sb-tick { position: absolute; top: 2px; font-size: 10px; opacity: 0.6; padding-left: 2px;
  border-left: 1px solid currentColor; height: 12px; line-height: 12px; pointer-events: none; }
.histenc-sb-boundary { position: absolute; top: 16px; bottom: 0; width: 0; border-left: 1px dashed #7a8; opacity: 0.8;
  pointer-events: none; }
.histenc-sb-switch { position: absolute; top: 14px; bottom: 0; width: 2px; margin-left: -1px; background: #e6c45a;
  pointer-events: none; }
.histenc-sb-sampled { position: absolute; bottom: 2px; height: 10px; box-sizing: border-box; font-size: 8px;
  line-height: 10px; padding-left: 3px; overflow: hidden; color: #222; background: #e6c45a; opacity: 0.55;
  border-left: 1px solid #fff; }
.histenc-sb-end { position: absolute; top: 0; bottom: 0; width: 2px; margin-left: -1px; background: #c84;
  pointer-events: none; }
.histenc-sb-block { position: absolute; height: 18px; min-width: 10px; box-sizing: border-box; padding: 0 4px;
  overflow: hidden; white-space: nowrap; text-overflow: ellipsis; text-align: left; font: inherit; color: #fff;
  background: #3b6ea8; border: 1px solid #8bb8ea; border-radius: 3px; cursor: grab; touch-action: none; }
.histenc-sb-block:focus-visible, .histenc-sb-block:focus { outline: 2px solid #fff; z-index: 2; }
.histenc-sb-block.histenc-sb-invalid { background: #8a3030; border-color: #f88; }
.histenc-sb-rows { display: flex; flex-direction: column; gap: 3px; }
.histenc-sb-row { display: flex; gap: 4px; }
.histenc-sb-time { width: 64px; flex: none; }
.histenc-sb-prompt { flex: 1; min-width: 0; }
.histenc-sb-row.histenc-sb-invalid input, .histenc-sb-time.histenc-sb-invalid { border-color: #f66; }
.histenc-sb-problems { margin: 0; padding-left: 16px; }
.histenc-sb-problems[aria-busy="true"] { opacity: 0.6; }
.histenc-sb-problem { color: var(--error-text, #f77); }
.histenc-sb-ok { list-style: none; margin-left: -16px; opacity: 0.6; }
.histenc-sb-note { color: #e6c45a; }
`;

export function injectStyle() {
  if (document.getElementById("histenc-storyboard-style")) return;
  const style = document.createElement("style");
  style.id = "histenc-storyboard-style";
  style.textContent = CSS;
  document.head.append(style);
}
