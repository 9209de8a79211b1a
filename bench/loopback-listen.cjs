// Preloaded into Portkey's gateway by bench/throughput.py (NODE_OPTIONS=--require): its server
// calls listen({port}) with no host, i.e. every interface, and has no option for the address.
// This makes every TCP listen() in that process bind 127.0.0.1; nothing else is changed.
"use strict";
const net = require("net");
const listen = net.Server.prototype.listen;
net.Server.prototype.listen = function (...args) {
  if (args[0] !== null && typeof args[0] === "object" && !("path" in args[0]) && !("handle" in args[0]) && !("fd" in args[0])) {
    args[0] = { ...args[0], host: "127.0.0.1" };
  } else if (typeof args[0] === "number" || (typeof args[0] === "string" && /^\d+$/.test(args[0]))) {
    if (args.length < 2 || args[1] === undefined || args[1] === null) args[1] = "127.0.0.1";
    else if (typeof args[1] !== "string") args.splice(1, 0, "127.0.0.1");
  }
  return listen.apply(this, args);
};
