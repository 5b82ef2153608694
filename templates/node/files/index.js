// A minimal HTTP server. Cove gives every workspace its own $PORT and shows
// it in the preview pane.
const http = require("http");
const port = Number(process.env.PORT) || 3000;

http
  .createServer((req, res) => {
    res.writeHead(200, { "Content-Type": "text/plain; charset=utf-8" });
    res.end(`Hello from Node.js ${process.version} on port ${port}\n`);
  })
  // Loopback only: the preview reaches it there; the network does not.
  .listen(port, "127.0.0.1", () => console.log(`listening on http://localhost:${port}`));
