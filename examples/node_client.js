// The reference README's Node.js client (npm `ws`), saving what it hears as a WAV file.
//
// It stays line for line the Soprano-RS README example, to show that clients written for that
// server work unchanged here. Changes: host, port, text and output path come from the command
// line; the PCM is saved as a 16-bit mono WAV at the frames' sample rate instead of raw bytes;
// an `error` message ends the run with status 1; the message handler reads ws 8's `isBinary`
// (see below); an API key, for a server started with `--api-key`, is sent as
// `Authorization: Bearer KEY`.
//
// Usage: npm ci --prefix examples &&
//        node examples/node_client.js [--api-key KEY] HOST PORT TEXT OUTPUT.wav
// (or the key in SOPRANO_API_KEY, the variable the server reads; the flag wins)
// Out of scope: barge-in (`stop`), reconnection, playback.
const WebSocket = require('ws');
const fs = require('fs');

let args = process.argv.slice(2);
let apiKey = process.env.SOPRANO_API_KEY;
if (args[0] === '--api-key' && args.length > 1) {
    apiKey = args[1];
    args = args.slice(2);
}
const [host, port, text, output] = args;
if (args.length !== 4) {
    console.error('usage: node_client.js [--api-key KEY] HOST PORT TEXT OUTPUT.wav');
    process.exit(2);
}

const ws = new WebSocket(`ws://${host}:${port}/v1/stream`,
    apiKey ? { headers: { Authorization: `Bearer ${apiKey}` } } : {});
const audioData = [];
let sampleRate = 32000;  // the server's default, until a frame header says otherwise

ws.on('open', () => {
    // Configure
    ws.send(JSON.stringify({ type: 'config', speed: 1.0 }));

    // Send text
    ws.send(JSON.stringify({
        type: 'text',
        text: text
    }));

    // Flush
    ws.send(JSON.stringify({ type: 'flush' }));
});

// The README was written for ws 7, which passed text messages as strings; ws 8 passes every
// message as a Buffer, so `data instanceof Buffer` would take `done` for audio. `isBinary` is
// what tells them apart now.
ws.on('message', (data, isBinary) => {
    if (isBinary) {
        const headerLen = data.readUInt32BE(0);
        const header = JSON.parse(data.slice(4, 4 + headerLen).toString());
        const pcm = data.slice(4 + headerLen);
        audioData.push(pcm);
        sampleRate = header.sample_rate;
        console.log(`Chunk ${header.chunk_id}: ${pcm.length} bytes`);
    } else {
        const msg = JSON.parse(data);
        if (msg.type === 'done') {
            ws.close();
        } else if (msg.type === 'error') {
            console.error(`server error: ${msg.message}`);
            process.exitCode = 1;
            ws.close();
        }
    }
});

// A failed connection emits 'error' and then 'close'; without this handler 'error' would throw.
ws.on('error', (err) => {
    console.error(err.message);
    process.exitCode = 1;
});

ws.on('close', () => {
    if (process.exitCode) {
        return;  // no half-heard file after an error
    }
    fs.writeFileSync(output, wav(Buffer.concat(audioData), sampleRate));
    console.log(`Audio saved to ${output}`);
});

// A 44-byte RIFF header for 16-bit mono PCM, then the samples (already little-endian).
function wav(pcm, rate) {
    const header = Buffer.alloc(44);
    header.write('RIFF', 0);
    header.writeUInt32LE(36 + pcm.length, 4);
    header.write('WAVE', 8);
    header.write('fmt ', 12);
    header.writeUInt32LE(16, 16);        // fmt chunk size
    header.writeUInt16LE(1, 20);         // integer PCM
    header.writeUInt16LE(1, 22);         // channels
    header.writeUInt32LE(rate, 24);
    header.writeUInt32LE(rate * 2, 28);  // bytes per second
    header.writeUInt16LE(2, 32);         // bytes per sample frame
    header.writeUInt16LE(16, 34);        // bits per sample
    header.write('data', 36);
    header.writeUInt32LE(pcm.length, 40);
    return Buffer.concat([header, pcm]);
}
