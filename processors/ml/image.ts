/**
 * Image statistics on RGB(A) or grey pixel buffers: brightness, RMS contrast, luma
 * histogram, Sobel edge density and dominant colours (k-means over sampled pixels).
 */
import { kmeans } from "./kmeans.js";
import { createRandom } from "./random.js";

/** A decoded image: `channels` values per pixel (1 grey, 3 RGB, 4 RGBA), 0–255, row-major. */
export interface RasterImage {
  readonly width: number;
  readonly height: number;
  readonly channels: 1 | 3 | 4;
  readonly pixels: ArrayLike<number>;
}

export interface DominantColour {
  readonly rgb: readonly [number, number, number];
  /** `#rrggbb`. */
  readonly hex: string;
  /** Share of the sampled pixels nearest to this colour. */
  readonly share: number;
}

export interface ImageStats {
  readonly width: number;
  readonly height: number;
  /** Mean luma (Rec. 601) in [0, 1]. */
  readonly brightness: number;
  /** RMS contrast: standard deviation of luma, in [0, 0.5]. */
  readonly contrast: number;
  /** Luma histogram: share of pixels per bin, bins of equal width over [0, 1]. */
  readonly histogram: readonly number[];
  /** Share of interior pixels whose Sobel gradient magnitude of luma exceeds the threshold. */
  readonly edgeDensity: number;
  readonly dominantColours: readonly DominantColour[];
}

export interface ImageStatsOptions {
  readonly bins: number;
  /** Sobel magnitude threshold on luma in [0, 1] units (a black/white step gives 4). */
  readonly edgeThreshold: number;
  readonly colours: number;
  /** Pixels sampled for the dominant colours. */
  readonly colourSamples: number;
  readonly seed: number;
}

function lumaOf(image: RasterImage): Float64Array {
  const { width, height, channels, pixels } = image;
  const luma = new Float64Array(width * height);
  for (let i = 0; i < luma.length; i++) {
    const o = i * channels;
    luma[i] = channels === 1 ? pixels[o]! / 255 : (0.299 * pixels[o]! + 0.587 * pixels[o + 1]! + 0.114 * pixels[o + 2]!) / 255;
  }
  return luma;
}

function hex(rgb: readonly number[]): string {
  return `#${rgb.map((v) => v.toString(16).padStart(2, "0")).join("")}`;
}

export function imageStats(image: RasterImage, options: ImageStatsOptions): ImageStats {
  const { width: w, height: h, channels } = image;
  const n = w * h;
  const luma = lumaOf(image);
  let sum = 0;
  let sq = 0;
  const histogram = new Array<number>(options.bins).fill(0);
  for (let i = 0; i < n; i++) {
    const v = luma[i]!;
    sum += v;
    sq += v * v;
    histogram[Math.min(options.bins - 1, Math.floor(v * options.bins))]!++;
  }
  const brightness = sum / n;
  const contrast = Math.sqrt(Math.max(0, sq / n - brightness * brightness));

  let edges = 0;
  const interior = Math.max(0, w - 2) * Math.max(0, h - 2);
  for (let y = 1; y < h - 1; y++) {
    for (let x = 1; x < w - 1; x++) {
      const at = (dx: number, dy: number): number => luma[(y + dy) * w + x + dx]!;
      const gx = at(1, -1) + 2 * at(1, 0) + at(1, 1) - at(-1, -1) - 2 * at(-1, 0) - at(-1, 1);
      const gy = at(-1, 1) + 2 * at(0, 1) + at(1, 1) - at(-1, -1) - 2 * at(0, -1) - at(1, -1);
      if (gx * gx + gy * gy > options.edgeThreshold * options.edgeThreshold) edges++;
    }
  }

  // Dominant colours: k-means on a seeded sample of pixels (all of them when few).
  const rng = createRandom(options.seed);
  const m = Math.min(n, options.colourSamples);
  const sample = new Float64Array(m * 3);
  for (let s = 0; s < m; s++) {
    const p = (m === n ? s : rng.int(n)) * channels;
    const px = image.pixels;
    if (channels === 1) sample.set([px[p]!, px[p]!, px[p]!], s * 3);
    else sample.set([px[p]!, px[p + 1]!, px[p + 2]!], s * 3);
  }
  const distinct = new Set<string>();
  for (let s = 0; s < m && distinct.size <= options.colours; s++) distinct.add(`${sample[s * 3]},${sample[s * 3 + 1]},${sample[s * 3 + 2]}`);
  const k = Math.min(options.colours, distinct.size);
  const fit = kmeans(sample, m, 3, { k, seed: rng.next() * 0xffffffff });
  const share = new Array<number>(k).fill(0);
  for (const a of fit.assignments) share[a]!++;
  const dominantColours = Array.from({ length: k }, (_, c): DominantColour => {
    const rgb = [0, 1, 2].map((j) => Math.round(fit.centroids[c * 3 + j]!)) as [number, number, number];
    return { rgb, hex: hex(rgb), share: share[c]! / m };
  })
    .filter((c) => c.share > 0)
    .sort((a, b) => b.share - a.share || (a.hex < b.hex ? -1 : 1));

  return { width: w, height: h, brightness, contrast, histogram: histogram.map((c) => c / n), edgeDensity: interior > 0 ? edges / interior : 0, dominantColours };
}
