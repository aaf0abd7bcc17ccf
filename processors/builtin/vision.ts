/**
 * `vision`: statistics of an image sent as a pixel array or as base64 PNG bytes:
 * brightness, contrast, luma histogram, edge density and dominant colours. Per key it
 * keeps running brightness statistics (Welford, online) and reports how unusual each
 * image's brightness is for that key.
 */
import { compileSchema } from "../../streams/index.js";
import { PNG } from "pngjs";
import { imageStats } from "../ml/image.js";
import type { ImageStats, RasterImage } from "../ml/image.js";
import type { ProcessorDefinition, ProcessorOutput } from "../types.js";
import { badInput, isRecord } from "./input-checks.js";
import { camelKeys, checkOptions, integerSchema, numberSchema, objectSchema, SEED_SCHEMA } from "../options.js";

/** Options of the `vision` processor (validated, frozen). In `flexcore.yaml` the keys are snake_case (`refit_every` for `refitEvery`). */
export interface VisionOptions {
  /** Histogram bins. @default 16 */
  readonly bins: number;
  /** Sobel magnitude threshold on luma in [0, 1] units (a hard black/white edge gives 4). @default 0.5 */
  readonly edgeThreshold: number;
  /** Dominant colours reported. @default 3 */
  readonly colours: number;
  /** Pixels sampled for the dominant colours. @default 4096 */
  readonly colourSamples: number;
  /** Images with more pixels are rejected. @default 4000000 */
  readonly maxPixels: number;
  /** Seed of the colour sampling and k-means. @default 42 */
  readonly seed: number;
}

/** Per-key state (JSON): running brightness mean and M2. */
export interface VisionState {
  images: number;
  meanBrightness: number;
  m2Brightness: number;
}

/** `data` of a `vision.analyzed` output. */
export interface VisionResult extends ImageStats {
  /** (brightness − key mean) / key standard deviation, before this image; `null` for the first two images. */
  readonly brightnessZ: number | null;
}

export const VISION_OUTPUT = "ImageAnalyzed";
const OPTIONS = compileSchema<Record<string, unknown>>(objectSchema({
  bins: integerSchema(16, 2, 256),
  edge_threshold: numberSchema(0.5, 0, 6, true),
  colours: integerSchema(3, 1, 32),
  colour_samples: integerSchema(4096, 16, 1_000_000),
  max_pixels: integerSchema(4_000_000, 1),
  seed: SEED_SCHEMA,
}));

/**
 * Reads `{ png: base64 }` or `{ width, height, channels?, pixels: number[] }` (values
 * 0–255, row-major; `channels` defaults to pixels.length / (width × height)), also
 * under `data.image`.
 */
export function readImage(data: unknown, field: string, maxPixels: number): RasterImage {
  let at = field;
  if (isRecord(data) && isRecord(data["image"])) {
    data = data["image"];
    at = `${field}.image`;
  }
  if (!isRecord(data)) throw badInput(at, data, "{ png: base64 } or { width, height, pixels }");
  if (typeof data["png"] === "string") {
    let png: PNG;
    try {
      png = PNG.sync.read(Buffer.from(data["png"], "base64"));
    } catch (err) {
      throw badInput(`${at}.png`, data["png"], `base64 PNG bytes (${(err as Error).message})`);
    }
    if (png.width * png.height > maxPixels) throw badInput(`${at}.png`, `${png.width}×${png.height}`, `at most ${maxPixels} pixels`);
    return { width: png.width, height: png.height, channels: 4, pixels: png.data };
  }
  const { width, height, pixels } = data;
  if (typeof width !== "number" || !Number.isInteger(width) || width < 1) throw badInput(`${at}.width`, width, "an integer ≥ 1");
  if (typeof height !== "number" || !Number.isInteger(height) || height < 1) throw badInput(`${at}.height`, height, "an integer ≥ 1");
  if (width * height > maxPixels) throw badInput(at, `${width}×${height}`, `at most ${maxPixels} pixels`);
  if (!Array.isArray(pixels)) throw badInput(`${at}.pixels`, pixels, "an array of numbers 0–255 (or use png)");
  const channels = data["channels"] ?? pixels.length / (width * height);
  if (channels !== 1 && channels !== 3 && channels !== 4) throw badInput(`${at}.channels`, channels, "1, 3 or 4 (pixels.length / (width × height))");
  if (pixels.length !== width * height * channels) throw badInput(`${at}.pixels`, pixels, `${width * height * channels} values (width × height × channels)`);
  for (let i = 0; i < pixels.length; i++) {
    const v: unknown = pixels[i];
    if (typeof v !== "number" || !(v >= 0 && v <= 255)) throw badInput(`${at}.pixels[${i}]`, v, "a number from 0 to 255");
  }
  return { width, height, channels, pixels: pixels as number[] };
}

export const vision: ProcessorDefinition<VisionOptions, VisionState> = {
  kind: "vision",
  description: "Image statistics from pixel arrays or PNG bytes: brightness, contrast, histogram, edge density, dominant colours; brightness z-score per key.",
  validateOptions(raw, path) {
    return Object.freeze(camelKeys<VisionOptions>(checkOptions(OPTIONS, raw, path)));
  },
  optionsSchema: OPTIONS.schema,
  initialState() {
    return { images: 0, meanBrightness: 0, m2Brightness: 0 };
  },
  process(prev, inputs, options) {
    const state: VisionState = { ...prev };
    const outputs = inputs.map((input, i): ProcessorOutput[] => {
      const stats = imageStats(readImage(input.data, `inputs[${i}].data`, options.maxPixels), options);
      const sd = state.images > 1 ? Math.sqrt(state.m2Brightness / (state.images - 1)) : 0;
      const brightnessZ = state.images > 1 ? (sd > 0 ? (stats.brightness - state.meanBrightness) / sd : 0) : null;
      state.images++;
      const delta = stats.brightness - state.meanBrightness;
      state.meanBrightness += delta / state.images;
      state.m2Brightness += delta * (stats.brightness - state.meanBrightness);
      const data: VisionResult = { ...stats, brightnessZ };
      return [{ type: VISION_OUTPUT, data }];
    });
    return { state, outputs };
  },
};
