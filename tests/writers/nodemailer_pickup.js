// Writes COUNT messages into a Pickup folder with nodemailer's pickup transport, all at once:
// each file is created in Pickup and written in place by fs.createWriteStream, a chunk at a time,
// exactly as an application using nodemailer-pickup-transport does.
// Usage: node nodemailer_pickup.js PICKUP_DIR COUNT ATTACHMENT_BYTES
'use strict';
const path = require('path');
const modules = path.join(__dirname, '..', 'node', 'node_modules');
const nodemailer = require(path.join(modules, 'nodemailer'));
const pickup = require(path.join(modules, 'nodemailer-pickup-transport'));

const [directory, count, size] = [process.argv[2], Number(process.argv[3]), Number(process.argv[4])];

// The attachment of message i: byte k is (i * 31 + k * 7) mod 256, so the test can rebuild it.
function attachment(i) {
  const data = Buffer.alloc(size);
  for (let k = 0; k < size; k++) data[k] = (i * 31 + k * 7) % 256;
  return data;
}

const transport = nodemailer.createTransport(pickup({ directory }));
const sends = [];
for (let i = 0; i < count; i++) {
  sends.push(transport.sendMail({
    from: 'alice@example.com',
    to: 'bob@example.com',
    subject: `nodemailer ${i}`,
    text: `message ${i}`,
    attachments: [{ filename: `data${i}.bin`, content: attachment(i) }],
  }));
}
Promise.all(sends).then(
  (results) => { for (const r of results) console.log(r.path); },
  (error) => { console.error(error); process.exit(1); },
);
