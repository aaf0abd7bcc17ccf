import { SingleBar } from "cli-progress";

/** Progress on stderr: a bar with rate and ETA on a terminal, a line a second otherwise. */
export interface Progress {
  /** Sets the amount done (and the total when it becomes known). */
  update(done: number, total?: number): void;
  stop(): void;
}

const LINE_INTERVAL_MS = 1_000;

export function createProgress(label: string, unit: string, total?: number): Progress {
  const started = Date.now();
  if (process.stderr.isTTY) {
    const bar = new SingleBar({
      format: `${label} [{bar}] {percentage}% | {value}/{total} ${unit} | {speed} ${unit}/s | ETA {eta_formatted}`,
      stream: process.stderr,
      hideCursor: true,
    });
    bar.start(total ?? 0, 0, { speed: "0" });
    return {
      update(done, newTotal) {
        if (newTotal !== undefined) bar.setTotal(newTotal);
        const seconds = (Date.now() - started) / 1000;
        bar.update(done, { speed: seconds > 0 ? Math.round(done / seconds).toString() : "0" });
      },
      stop: () => bar.stop(),
    };
  }
  let last = 0;
  let currentTotal = total;
  return {
    update(done, newTotal) {
      if (newTotal !== undefined) currentTotal = newTotal;
      const now = Date.now();
      if (now - last < LINE_INTERVAL_MS) return;
      last = now;
      const rate = Math.round(done / Math.max(0.001, (now - started) / 1000));
      const eta = currentTotal && rate > 0 ? ` ETA ${Math.ceil((currentTotal - done) / rate)}s` : "";
      process.stderr.write(`${label}: ${done}${currentTotal ? `/${currentTotal}` : ""} ${unit}, ${rate} ${unit}/s${eta}\n`);
    },
    stop() {},
  };
}
