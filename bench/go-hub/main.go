// Command go-hub is a reference WebSocket hub built the way gorilla/websocket's chat
// example is built (examples/chat: hub.go, client.go), speaking just enough of the
// SigmaVault protocol (docs/protocol.md) for `sigmavault bench` to run against it
// unmodified. It exists only to compare our hub with "a Go hub of the gorilla
// chat-hub pattern" under the same bench on the same machine; see README.md.
//
// The design, as in the chat example:
//   - one hub goroutine owns the set of clients and is fed through channels
//     (register, unregister, broadcast, and here commands for subscribe/unsubscribe);
//   - every client has a `send chan []byte` of 256, a readPump and a writePump goroutine;
//   - the hub never blocks on a client: a full send channel drops the client;
//   - the writePump pings every pingPeriod, the readPump gives up after pongWait
//     without a pong.
//
// Deliberate differences from the chat example:
//   - one message per WebSocket frame (the example packs whatever is queued into one
//     frame separated by newlines; our protocol is one JSON message per frame), so a
//     delivery is one WriteMessage, i.e. one write syscall, per message per client;
//   - pings every 30 s (the example: 54 s) so the idle cost compares with our server's
//     30 s pings; pong wait stays 60 s;
//   - the hub filters by subscription and events are sequenced (a global seq under a
//     mutex at POST time) and encoded once; every subscriber is sent the same bytes;
//   - --broadcast-buffer N gives the broadcast channel a buffer (the example's is
//     unbuffered), so that a POST can return once its events are queued for fan-out.
package main

import (
	"bytes"
	"crypto/rand"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"os"
	"os/signal"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/gorilla/websocket"
)

const (
	// Time allowed to write a message to the peer.
	writeWait = 10 * time.Second
	// Time allowed to read the next pong message from the peer.
	pongWait = 60 * time.Second
	// Send pings to peer with this period.
	pingPeriod = 30 * time.Second
	// Maximum message size allowed from peer.
	maxMessageSize = 64 * 1024
	// Messages queued per client before the hub drops it (the chat example's 256).
	sendQueue = 256
	// Most events per POST, and the largest POST body.
	maxBatch = 1000
	maxBody  = 1 << 20

	timestampLayout = "2006-01-02T15:04:05.000Z"
)

// The subscriptions a new connection starts with, as our server's welcome lists them
// (so the bench does the same unsubscribe round trip against both servers).
var defaultSubscriptions = []string{
	"system.status", "storage.update", "compression.update", "notification",
	"heartbeat", "connection_error", "rpc_error", "circuit_breaker.*",
}

var upgrader = websocket.Upgrader{
	ReadBufferSize:  1024,
	WriteBufferSize: 1024,
	Subprotocols:    []string{"sigmavault.v1"},
}

// ---------------------------------------------------------------------------
// Hub (the chat example's hub.go, plus sequencing and subscription filtering)

// event is one sequenced event, encoded once.
type event struct {
	typ   string
	seq   uint64
	frame []byte
}

// command is a subscribe/unsubscribe/ping from a client, or a ready-made reply (an
// error frame); the hub applies it so that it is ordered with the broadcasts.
type command struct {
	client   *Client
	kind     string
	id       json.RawMessage
	patterns []string
	reply    []byte
}

// Hub maintains the set of active clients and broadcasts messages to them.
type Hub struct {
	// Registered clients (owned by run).
	clients map[*Client]bool
	// Sequenced events to fan out.
	broadcast chan event
	// Register requests from the clients.
	register chan *Client
	// Unregister requests from clients.
	unregister chan *Client
	// Subscription changes and pings from clients.
	commands chan command

	epoch string

	// The publish lock: seqs are assigned and events handed to the hub under it, so
	// the broadcast channel carries them in seq order.
	mu  sync.Mutex
	seq uint64

	// Counters for GET /api/v1/hub, stored by run.
	nclients  atomic.Int64
	delivered atomic.Uint64
	dropped   atomic.Uint64
	total     atomic.Uint64
}

// newHub makes the hub; buffer is the broadcast channel's capacity (the example's: 0).
func newHub(buffer int) *Hub {
	return &Hub{
		broadcast:  make(chan event, buffer),
		register:   make(chan *Client),
		unregister: make(chan *Client),
		commands:   make(chan command),
		clients:    make(map[*Client]bool),
		epoch:      uuid4(),
	}
}

func (h *Hub) run() {
	// The seq of the last event fanned out: a client registered now gets every later one.
	var last uint64
	for {
		select {
		case client := <-h.register:
			h.clients[client] = true
			h.nclients.Store(int64(len(h.clients)))
			h.total.Add(1)
			client.send <- welcome(client, h.epoch, last) // the channel is empty
		case client := <-h.unregister:
			if _, ok := h.clients[client]; ok {
				delete(h.clients, client)
				close(client.send)
				h.nclients.Store(int64(len(h.clients)))
			}
		case cmd := <-h.commands:
			if _, ok := h.clients[cmd.client]; ok {
				h.deliver(cmd.client, cmd.apply())
			}
		case ev := <-h.broadcast:
			last = ev.seq
			var n uint64
			for client := range h.clients {
				if client.matches(ev.typ) && h.deliver(client, ev.frame) {
					n++
				}
			}
			h.delivered.Add(n)
		}
	}
}

// deliver queues a message for a client, or drops the client if its queue is full.
func (h *Hub) deliver(client *Client, message []byte) bool {
	select {
	case client.send <- message:
		return true
	default:
		client.slow = true // read by writePump after the close below
		close(client.send)
		delete(h.clients, client)
		h.nclients.Store(int64(len(h.clients)))
		h.dropped.Add(1)
		return false
	}
}

// ---------------------------------------------------------------------------
// Client (the chat example's client.go)

// Client is a middleman between the websocket connection and the hub.
type Client struct {
	hub *Hub
	// The websocket connection.
	conn *websocket.Conn
	// Buffered channel of outbound messages.
	send chan []byte
	// Set by the hub when it drops the client for a full queue.
	slow bool
	id   string

	// Subscriptions, owned by the hub goroutine: patterns as given, and the split
	// used for matching ("*" → prefix "", "custom.*" → prefix "custom.").
	subs     map[string]bool
	exact    map[string]bool
	prefixes []string
}

func newClient(hub *Hub, conn *websocket.Conn) *Client {
	c := &Client{hub: hub, conn: conn, send: make(chan []byte, sendQueue), id: uuid4(), subs: map[string]bool{}}
	for _, p := range defaultSubscriptions {
		c.subs[p] = true
	}
	c.reindex()
	return c
}

func (c *Client) matches(typ string) bool {
	if c.exact[typ] {
		return true
	}
	for _, p := range c.prefixes {
		if strings.HasPrefix(typ, p) {
			return true
		}
	}
	return false
}

func (c *Client) reindex() {
	c.exact = make(map[string]bool, len(c.subs))
	c.prefixes = c.prefixes[:0]
	for p := range c.subs {
		if strings.HasSuffix(p, "*") {
			c.prefixes = append(c.prefixes, strings.TrimSuffix(p, "*"))
		} else {
			c.exact[p] = true
		}
	}
}

// sorted lists the patterns in the protocol's canonical order: "*", prefixes, exact.
func (c *Client) sorted() []string {
	out := make([]string, 0, len(c.subs))
	for p := range c.subs {
		out = append(out, p)
	}
	rank := func(p string) int {
		switch {
		case p == "*":
			return 0
		case strings.HasSuffix(p, ".*"):
			return 1
		}
		return 2
	}
	sort.Slice(out, func(i, j int) bool {
		if ri, rj := rank(out[i]), rank(out[j]); ri != rj {
			return ri < rj
		}
		return out[i] < out[j]
	})
	return out
}

// apply runs on the hub goroutine and returns the reply.
func (cmd command) apply() []byte {
	c := cmd.client
	switch cmd.kind {
	case "subscribe", "unsubscribe":
		for _, p := range cmd.patterns {
			if cmd.kind == "subscribe" {
				c.subs[p] = true
			} else {
				delete(c.subs, p)
			}
		}
		c.reindex()
		return envelope(cmd.kind+"d", cmd.id, map[string]any{"subscriptions": c.sorted()})
	case "ping":
		return envelope("pong", cmd.id, map[string]any{})
	}
	return cmd.reply
}

// readPump pumps messages from the websocket connection to the hub.
//
// The application runs readPump in a per-connection goroutine. The application
// ensures that there is at most one reader on a connection by executing all
// reads from this goroutine.
func (c *Client) readPump() {
	defer func() {
		c.hub.unregister <- c
		c.conn.Close()
	}()
	c.conn.SetReadLimit(maxMessageSize)
	c.conn.SetReadDeadline(time.Now().Add(pongWait))
	c.conn.SetPongHandler(func(string) error { c.conn.SetReadDeadline(time.Now().Add(pongWait)); return nil })
	for {
		_, message, err := c.conn.ReadMessage()
		if err != nil {
			if websocket.IsUnexpectedCloseError(err, websocket.CloseNormalClosure, websocket.CloseGoingAway, websocket.CloseNoStatusReceived, websocket.CloseAbnormalClosure) {
				log.Printf("error: %v", err)
			}
			break
		}
		c.hub.commands <- parseCommand(c, message)
	}
}

// writePump pumps messages from the hub to the websocket connection.
//
// A goroutine running writePump is started for each connection. The
// application ensures that there is at most one writer to a connection by
// executing all writes from this goroutine.
func (c *Client) writePump() {
	ticker := time.NewTicker(pingPeriod)
	defer func() {
		ticker.Stop()
		c.conn.Close()
	}()
	for {
		select {
		case message, ok := <-c.send:
			c.conn.SetWriteDeadline(time.Now().Add(writeWait))
			if !ok {
				// The hub closed the channel.
				closing := []byte{}
				if c.slow {
					closing = websocket.FormatCloseMessage(4008, "slow_consumer")
				}
				c.conn.WriteMessage(websocket.CloseMessage, closing)
				return
			}
			// One message, one frame, one write.
			if err := c.conn.WriteMessage(websocket.TextMessage, message); err != nil {
				return
			}
		case <-ticker.C:
			c.conn.SetWriteDeadline(time.Now().Add(writeWait))
			if err := c.conn.WriteMessage(websocket.PingMessage, nil); err != nil {
				return
			}
		}
	}
}

// serveWs handles websocket requests from the peer.
func serveWs(hub *Hub, w http.ResponseWriter, r *http.Request) {
	conn, err := upgrader.Upgrade(w, r, nil)
	if err != nil {
		log.Println(err)
		return
	}
	client := newClient(hub, conn)
	client.hub.register <- client

	// Allow collection of memory referenced by the caller by doing all work in
	// new goroutines.
	go client.writePump()
	go client.readPump()
}

// ---------------------------------------------------------------------------
// The protocol subset

type welcomeData struct {
	ClientID        string   `json:"client_id"`
	ServerVersion   string   `json:"server_version"`
	ProtocolVersion int      `json:"protocol_version"`
	Epoch           string   `json:"epoch"`
	Seq             uint64   `json:"seq"`
	Subscriptions   []string `json:"subscriptions"`
	PingIntervalMs  int64    `json:"ping_interval_ms"`
	PongTimeoutMs   int64    `json:"pong_timeout_ms"`
	Limits          struct {
		MaxMessageBytes  int `json:"max_message_bytes"`
		QueueEvents      int `json:"queue_events"`
		InboundPerSecond int `json:"inbound_per_second"` // 0: not enforced
		InboundBurst     int `json:"inbound_burst"`
	} `json:"limits"`
}

func welcome(c *Client, epoch string, seq uint64) []byte {
	d := welcomeData{
		ClientID: c.id, ServerVersion: "go-hub", ProtocolVersion: 1, Epoch: epoch, Seq: seq,
		Subscriptions:  c.sorted(),
		PingIntervalMs: pingPeriod.Milliseconds(),
		PongTimeoutMs:  (pongWait - pingPeriod).Milliseconds(),
	}
	d.Limits.MaxMessageBytes = maxMessageSize
	d.Limits.QueueEvents = sendQueue
	return envelope("welcome", nil, d)
}

// envelope encodes a reply: {"type","timestamp","id"?,"data"}.
func envelope(typ string, id json.RawMessage, data any) []byte {
	var b bytes.Buffer
	b.WriteString(`{"type":`)
	writeJSON(&b, typ)
	b.WriteString(`,"timestamp":"`)
	b.WriteString(time.Now().UTC().Format(timestampLayout))
	b.WriteByte('"')
	if len(id) > 0 {
		b.WriteString(`,"id":`)
		b.Write(id)
	}
	b.WriteString(`,"data":`)
	writeJSON(&b, data)
	b.WriteByte('}')
	return b.Bytes()
}

func writeJSON(b *bytes.Buffer, v any) {
	raw, err := json.Marshal(v)
	if err != nil {
		panic(err)
	}
	b.Write(raw)
}

func errorFrame(id json.RawMessage, code, message string) []byte {
	return envelope("error", id, map[string]string{"code": code, "message": message})
}

func parseCommand(c *Client, message []byte) command {
	var msg struct {
		Type string          `json:"type"`
		ID   json.RawMessage `json:"id"`
		Data struct {
			Types []string `json:"types"`
		} `json:"data"`
	}
	if err := json.Unmarshal(message, &msg); err != nil || msg.Type == "" {
		return command{client: c, reply: errorFrame(nil, "bad_json", "expected {\"type\": string, \"id\"?, \"data\"?}")}
	}
	switch msg.Type {
	case "subscribe", "unsubscribe":
		if len(msg.Data.Types) == 0 || len(msg.Data.Types) > 64 {
			return command{client: c, reply: errorFrame(msg.ID, "bad_request", msg.Type+": data.types must hold 1 to 64 patterns")}
		}
		for _, p := range msg.Data.Types {
			if !validPattern(p) {
				return command{client: c, reply: errorFrame(msg.ID, "bad_request", msg.Type+": invalid pattern "+strconv.Quote(p))}
			}
		}
		return command{client: c, kind: msg.Type, id: msg.ID, patterns: msg.Data.Types}
	case "ping":
		return command{client: c, kind: "ping", id: msg.ID}
	}
	return command{client: c, reply: errorFrame(msg.ID, "unknown_type", "unknown message type "+strconv.Quote(msg.Type))}
}

// validType: segments of a-z 0-9 _ - separated by dots, at most 128 bytes.
func validType(t string) bool {
	if t == "" || len(t) > 128 {
		return false
	}
	for _, seg := range strings.Split(t, ".") {
		if seg == "" {
			return false
		}
		for i := 0; i < len(seg); i++ {
			ch := seg[i]
			if !(ch >= 'a' && ch <= 'z' || ch >= '0' && ch <= '9' || ch == '_' || ch == '-') {
				return false
			}
		}
	}
	return true
}

func validPattern(p string) bool {
	return p == "*" || validType(strings.TrimSuffix(p, ".*"))
}

// ---------------------------------------------------------------------------
// REST: POST /api/v1/events, GET /api/v1/health, GET /api/v1/hub

type inEvent struct {
	Type string          `json:"type"`
	Data json.RawMessage `json:"data"`
}

func httpError(w http.ResponseWriter, status int, code, message string) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	json.NewEncoder(w).Encode(map[string]any{"error": map[string]string{"code": code, "message": message}})
}

func writeJSONResponse(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	json.NewEncoder(w).Encode(v)
}

func (h *Hub) serveEvents(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodPost {
		w.Header().Set("Allow", "POST")
		httpError(w, http.StatusMethodNotAllowed, "method_not_allowed", "POST only")
		return
	}
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, maxBody))
	if err != nil {
		httpError(w, http.StatusRequestEntityTooLarge, "payload_too_large", err.Error())
		return
	}
	var req struct {
		inEvent
		Events *[]inEvent `json:"events"`
	}
	if err := json.Unmarshal(body, &req); err != nil {
		httpError(w, http.StatusBadRequest, "bad_json", "request body is not a JSON object: "+err.Error())
		return
	}
	events := []inEvent{req.inEvent}
	if req.Events != nil {
		events = *req.Events
		if len(events) == 0 {
			httpError(w, http.StatusUnprocessableEntity, "invalid_event", "events: the batch is empty")
			return
		}
		if len(events) > maxBatch {
			httpError(w, http.StatusRequestEntityTooLarge, "too_many_events", "a batch may hold at most 1000 events")
			return
		}
	}
	for i := range events {
		e := &events[i]
		if !validType(e.Type) || !(e.Type == "notification" || strings.HasPrefix(e.Type, "custom.")) {
			httpError(w, http.StatusUnprocessableEntity, "invalid_event", "type: "+strconv.Quote(e.Type)+" may not be published")
			return
		}
		if len(e.Data) == 0 {
			e.Data = json.RawMessage("{}")
		} else if e.Data[0] != '{' {
			httpError(w, http.StatusUnprocessableEntity, "invalid_event", "data: must be a JSON object")
			return
		}
	}

	timestamp := time.Now().UTC().Format(timestampLayout)
	seqs := make([]uint64, len(events))
	h.mu.Lock()
	for i, e := range events {
		h.seq++
		seqs[i] = h.seq
		h.broadcast <- event{typ: e.Type, seq: h.seq, frame: encodeEvent(e, timestamp, h.seq)}
	}
	h.mu.Unlock()

	resp := struct {
		Seq   *uint64  `json:"seq,omitempty"`
		Seqs  []uint64 `json:"seqs"`
		Epoch string   `json:"epoch"`
	}{Seqs: seqs, Epoch: h.epoch}
	if len(seqs) == 1 {
		resp.Seq = &seqs[0]
	}
	writeJSONResponse(w, http.StatusAccepted, resp)
}

// encodeEvent builds the frame every subscriber is sent: {"type","timestamp","seq","data"}
// with data as the publisher gave it.
func encodeEvent(e inEvent, timestamp string, seq uint64) []byte {
	b := make([]byte, 0, len(e.Type)+len(e.Data)+80)
	b = append(b, `{"type":"`...)
	b = append(b, e.Type...) // validated: needs no escaping
	b = append(b, `","timestamp":"`...)
	b = append(b, timestamp...)
	b = append(b, `","seq":`...)
	b = strconv.AppendUint(b, seq, 10)
	b = append(b, `,"data":`...)
	b = append(b, e.Data...)
	b = append(b, '}')
	return b
}

func (h *Hub) currentSeq() uint64 {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.seq
}

func (h *Hub) serveHealth(w http.ResponseWriter, r *http.Request) {
	writeJSONResponse(w, http.StatusOK, map[string]any{
		"status":     "ok",
		"components": map[string]any{"hub": map[string]any{"status": "ok", "clients": h.nclients.Load(), "seq": h.currentSeq()}},
	})
}

func (h *Hub) serveStats(w http.ResponseWriter, r *http.Request) {
	writeJSONResponse(w, http.StatusOK, map[string]any{
		"server":            "go-hub (gorilla chat-hub pattern)",
		"clients":           h.nclients.Load(),
		"connections_total": h.total.Load(),
		"epoch":             h.epoch,
		"seq":               h.currentSeq(),
		"events_published":  h.currentSeq(),
		"events_delivered":  h.delivered.Load(),
		"dropped_by_close":  h.dropped.Load(),
	})
}

// ---------------------------------------------------------------------------

func uuid4() string {
	var u [16]byte
	if _, err := rand.Read(u[:]); err != nil {
		panic(err)
	}
	u[6] = u[6]&0x0f | 0x40
	u[8] = u[8]&0x3f | 0x80
	return fmt.Sprintf("%x-%x-%x-%x-%x", u[0:4], u[4:6], u[6:8], u[8:10], u[10:16])
}

// raiseFileLimit lifts the soft open-file limit to the hard one (Go ≥ 1.19 does this
// by itself; older toolchains do not).
func raiseFileLimit() {
	var lim syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
		log.Printf("getrlimit: %v", err)
		return
	}
	if lim.Cur < lim.Max {
		lim.Cur = lim.Max
		if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
			log.Printf("setrlimit: %v", err)
		}
	}
}

func main() {
	host := flag.String("host", "127.0.0.1", "address to listen on")
	port := flag.Int("port", 12081, "port to listen on (0: any free port)")
	buffer := flag.Int("broadcast-buffer", 0,
		"events the broadcast channel holds; 0, as in the chat example, makes a POST wait until the hub has fanned out all but its last event")
	flag.Parse()
	raiseFileLimit()

	hub := newHub(*buffer)
	go hub.run()

	mux := http.NewServeMux()
	mux.HandleFunc("/ws", func(w http.ResponseWriter, r *http.Request) { serveWs(hub, w, r) })
	mux.HandleFunc("/api/v1/events", hub.serveEvents)
	mux.HandleFunc("/api/v1/health", hub.serveHealth)
	mux.HandleFunc("/api/v1/hub", hub.serveStats)

	ln, err := net.Listen("tcp", net.JoinHostPort(*host, strconv.Itoa(*port)))
	if err != nil {
		log.Fatal(err)
	}
	fmt.Printf("listening on http://%s\n", ln.Addr())

	// SIGTERM/SIGINT: exit 0 at once (the bench scripts stop servers with SIGTERM).
	stop := make(chan os.Signal, 1)
	signal.Notify(stop, syscall.SIGTERM, syscall.SIGINT)
	go func() {
		<-stop
		os.Exit(0)
	}()

	log.Fatal(http.Serve(ln, mux))
}
