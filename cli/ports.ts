import { createServer } from "node:net";

/** Whether `host:port` can be listened on right now (the embedded server and the gateway prefer fixed ports). */
export function portFree(port: number, host: string): Promise<boolean> {
  return new Promise((res) => {
    const srv = createServer();
    srv.once("error", () => res(false));
    srv.listen(port, host, () => srv.close(() => res(true)));
  });
}
