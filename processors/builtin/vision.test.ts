import { PNG } from "pngjs";
import { describe, expect, it } from "vitest";
import { InvalidEventError } from "../../streams/index.js";
import { ConfigError } from "../errors.js";
import type { ProcessorInput } from "../types.js";
import { vision } from "./vision.js";
import type { VisionResult } from "./vision.js";

const P = "processors[4].options";
const inputs = (images: unknown[]): ProcessorInput[] =>
  images.map((data, i) => ({ tenant: "t", key: "cam", subject: "evt.t.frames.cam", seq: i + 1, type: "frame", data, time: "2026-01-01T00:00:00Z" }));

/** 6×4 RGB: left half black, right half white. */
function halves(): { width: number; height: number; pixels: number[] } {
  const pixels: number[] = [];
  for (let y = 0; y < 4; y++) for (let x = 0; x < 6; x++) pixels.push(...(x < 3 ? [0, 0, 0] : [255, 255, 255]));
  return { width: 6, height: 4, pixels };
}

describe("vision processor (unit)", () => {
  it("validates options, naming the path", () => {
    expect(() => vision.validateOptions({ bins: 1 }, P)).toThrow(ConfigError);
    expect(() => vision.validateOptions({ bins: 1 }, P)).toThrow("processors[4].options.bins: expected integer ≥ 2 and ≤ 256, got 1");
    expect(() => vision.validateOptions({ colours: "three" }, P)).toThrow(/options\.colours/);
  });

  it("measures a half-black, half-white image exactly", () => {
    const o = vision.validateOptions({ bins: 4 }, P);
    const r = vision.process(vision.initialState(o, "cam"), inputs([halves()]), o);
    const s = r.outputs[0]![0]!.data as VisionResult;
    expect(s.brightness).toBeCloseTo(0.5, 12);
    expect(s.contrast).toBeCloseTo(0.5, 12);
    expect(s.histogram).toEqual([0.5, 0, 0, 0.5]);
    // Interior columns 1..4: columns 2 and 3 straddle the edge.
    expect(s.edgeDensity).toBe(0.5);
    expect(s.dominantColours.map((c) => [c.hex, c.share])).toEqual([
      ["#000000", 0.5],
      ["#ffffff", 0.5],
    ]);
    expect(s.brightnessZ).toBeNull();
  });

  it("decodes base64 PNG bytes to the same statistics as the pixel array", () => {
    const img = halves();
    const png = new PNG({ width: img.width, height: img.height });
    for (let i = 0; i < img.width * img.height; i++) png.data.set([img.pixels[i * 3]!, img.pixels[i * 3 + 1]!, img.pixels[i * 3 + 2]!, 255], i * 4);
    const b64 = PNG.sync.write(png).toString("base64");
    const o = vision.validateOptions({}, P);
    const r = vision.process(vision.initialState(o, "cam"), inputs([img, { image: { png: b64 } }]), o);
    const [a, b] = r.outputs.map((x) => x[0]!.data as VisionResult);
    expect({ ...b!, brightnessZ: null }).toEqual({ ...a!, brightnessZ: null });
  });

  it("tracks brightness per key and is deterministic on a larger noisy image", () => {
    const o = vision.validateOptions({ colour_samples: 64 }, P);
    const grey = (v: number): unknown => ({ width: 2, height: 2, channels: 1, pixels: [v, v, v, v] });
    const noisy = { width: 40, height: 30, pixels: Array.from({ length: 40 * 30 * 3 }, (_, i) => (i * 7919) % 256) };
    const r = vision.process(vision.initialState(o, "cam"), inputs([grey(100), grey(110), grey(120), noisy]), o);
    expect((r.outputs[2]![0]!.data as VisionResult).brightnessZ).toBeCloseTo((120 / 255 - 105 / 255) / Math.sqrt(2 * (5 / 255) ** 2), 9);
    const again = vision.process(vision.initialState(o, "cam"), inputs([grey(100), grey(110), grey(120), noisy]), o);
    expect(JSON.stringify(again.outputs)).toBe(JSON.stringify(r.outputs));
    expect((r.outputs[3]![0]!.data as VisionResult).dominantColours).toHaveLength(3);
  });

  it("rejects malformed images, naming the field", () => {
    const o = vision.validateOptions({ max_pixels: 100 }, P);
    const s = vision.initialState(o, "cam");
    expect(() => vision.process(s, inputs([{ width: 2, height: 2, pixels: [1, 2, 3] }]), o)).toThrow(InvalidEventError);
    expect(() => vision.process(s, inputs([{ width: 1, height: 1, pixels: [1, 2, 300] }]), o)).toThrow(/inputs\[0\]\.data\.pixels\[2\]/);
    expect(() => vision.process(s, inputs([{ png: "bm90IGEgcG5n" }]), o)).toThrow(/inputs\[0\]\.data\.png/);
    expect(() => vision.process(s, inputs([{ width: 20, height: 20, pixels: [] }]), o)).toThrow(/at most 100 pixels/);
  });
});
