// The models run here, off the page's thread (as WebLLM does), so the page stays responsive
// while kernels compile and the loop runs. All logic is in loop_host.js.

import { LoopHost } from "./loop_host.js";

const host = new LoopHost("worker");
self.onmessage = (event) => {
  host.handle(event.data, (message, transfer) => self.postMessage(message, transfer ?? []));
};
