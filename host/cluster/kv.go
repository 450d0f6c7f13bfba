package cluster

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"strings"
	"time"
)

// ErrStaleToken is a write made with a fencing token that is no longer
// the program's: another node took the program over.
var ErrStaleToken = errors.New("stale fencing token: the program has been taken over by another node")

// ErrNoKey is a key the program's store does not hold.
var ErrNoKey = errors.New("no such key")

// ErrQuota is a write that would take a program's store past its quota
// (keys or total bytes).
var ErrQuota = errors.New("quota exceeded")

// MaxValue bounds one stored value: a write is one Raft log entry, kept
// well under dqlite's limits.
const MaxValue = 1 << 20

// Quota bounds one program's store; a zero field does not bound.
type Quota struct {
	// Keys is the most keys the program holds.
	Keys int
	// Bytes is the most bytes of keys and values the program holds.
	Bytes int64
}

// KVWrite qualifies a KVSet.
type KVWrite struct {
	// Token is the program's fencing token (0 for an on-demand program).
	Token int64
	// TTL, when positive, makes the key expire that long after the write;
	// 0 keeps it until it is deleted.
	TTL time.Duration
	// Quota is checked in the write's transaction.
	Quota Quota
}

// KVEntry describes a stored key.
type KVEntry struct {
	Key string `json:"key"`
	// Size is the value's length in bytes.
	Size int `json:"size"`
	// Expires is when the key expires (zero: never).
	Expires time.Time `json:"expires,omitzero"`
}

// KVUsage is what a program's store holds.
type KVUsage struct {
	Keys  int   `json:"keys"`
	Bytes int64 `json:"bytes"`
}

// An expired key is invisible at once (every read compares its expiry,
// in Unix milliseconds of the reading node's clock, with now) and deleted
// later: by the next write of its program, or by the leader's sweep
// (ExpireKeys). Node clocks are assumed to agree to well under a second.

func nowMillis() int64 { return time.Now().UnixMilli() }

// live is the condition of a row that has not expired; it takes now.
const live = `(expires = 0 OR expires > ?)`

// KVGet returns the value of a program's key.
func (n *Node) KVGet(ctx context.Context, program, key string) ([]byte, error) {
	var v []byte
	err := n.query(ctx, func(ctx context.Context, db *sql.DB) error {
		return db.QueryRowContext(ctx, `SELECT value FROM kv WHERE program = ? AND key = ? AND `+live, program, key, nowMillis()).Scan(&v)
	})
	if errors.Is(err, sql.ErrNoRows) {
		return nil, fmt.Errorf("%w: %s", ErrNoKey, key)
	}
	if err != nil {
		return nil, fmt.Errorf("cluster: reading %s of %s: %w", key, program, err)
	}
	return v, nil
}

// KVList returns up to limit of a program's keys that start with prefix
// and sort after after (bytewise), in order; more reports whether there
// are others past them.
func (n *Node) KVList(ctx context.Context, program, prefix, after string, limit int) (entries []KVEntry, more bool, err error) {
	if limit <= 0 {
		return nil, false, fmt.Errorf("cluster: listing keys: limit %d", limit)
	}
	from := max(prefix, after)
	q := `SELECT key, length(value), expires FROM kv WHERE program = ? AND key >= ? AND key != ? AND ` + live
	args := []any{program, from, after, nowMillis()}
	if end, ok := prefixEnd(prefix); ok {
		q += ` AND key < ?`
		args = append(args, end)
	}
	q += ` ORDER BY key LIMIT ?`
	args = append(args, limit+1)
	err = n.query(ctx, func(ctx context.Context, db *sql.DB) error {
		entries = entries[:0]
		rows, err := db.QueryContext(ctx, q, args...)
		if err != nil {
			return err
		}
		defer rows.Close()
		for rows.Next() {
			var e KVEntry
			var expires int64
			if err := rows.Scan(&e.Key, &e.Size, &expires); err != nil {
				return err
			}
			if expires != 0 {
				e.Expires = time.UnixMilli(expires).UTC()
			}
			if strings.HasPrefix(e.Key, prefix) {
				entries = append(entries, e)
			}
		}
		return rows.Err()
	})
	if err != nil {
		return nil, false, fmt.Errorf("cluster: listing the keys of %s: %w", program, err)
	}
	if len(entries) > limit {
		return entries[:limit], true, nil
	}
	return entries, false, nil
}

// prefixEnd is the least string above every string that starts with
// prefix (false: there is none, or prefix is empty).
func prefixEnd(prefix string) (string, bool) {
	b := []byte(prefix)
	for i := len(b) - 1; i >= 0; i-- {
		if b[i] < 0xff {
			b[i]++
			return string(b[:i+1]), true
		}
	}
	return "", false
}

// KVUsage returns what a program's store holds (expired keys not
// counted).
func (n *Node) KVUsage(ctx context.Context, program string) (KVUsage, error) {
	var u KVUsage
	err := n.query(ctx, func(ctx context.Context, db *sql.DB) error {
		return db.QueryRowContext(ctx, `SELECT count(*), coalesce(sum(length(key) + length(value)), 0) FROM kv
			WHERE program = ? AND `+live, program, nowMillis()).Scan(&u.Keys, &u.Bytes)
	})
	if err != nil {
		return KVUsage{}, fmt.Errorf("cluster: the store usage of %s: %w", program, err)
	}
	return u, nil
}

// KVPut stores a program's key, without expiry or quota (the admin
// API's write). A persistent program's write must carry its fencing
// token (as given to it): it is refused with ErrStaleToken unless the
// token is the program's current one and this node holds it. An
// on-demand program's write carries none (token 0) and is not fenced.
func (n *Node) KVPut(ctx context.Context, program, key string, value []byte, token int64) error {
	return n.KVSet(ctx, program, key, value, KVWrite{Token: token})
}

// KVSet stores a program's key, fenced by w.Token as KVPut is, with an
// expiry when w.TTL is set; a write that would take the program past
// w.Quota is refused with ErrQuota. The program's expired keys are
// deleted in the same transaction.
func (n *Node) KVSet(ctx context.Context, program, key string, value []byte, w KVWrite) error {
	if len(value) > MaxValue {
		return fmt.Errorf("cluster: the value of %s is %d bytes, more than %d", key, len(value), MaxValue)
	}
	if w.TTL < 0 {
		return fmt.Errorf("cluster: the TTL of %s is negative (%s)", key, w.TTL)
	}
	err := n.tx(ctx, func(tx *sql.Tx) error {
		if err := n.fence(tx, program, w.Token); err != nil {
			return err
		}
		now := nowMillis()
		if _, err := tx.Exec(`DELETE FROM kv WHERE program = ? AND expires != 0 AND expires <= ?`, program, now); err != nil {
			return err
		}
		if err := checkQuota(tx, program, key, len(value), w.Quota); err != nil {
			return err
		}
		var expires int64
		if w.TTL > 0 {
			expires = now + max(w.TTL.Milliseconds(), 1)
		}
		_, err := tx.Exec(`INSERT INTO kv (program, key, value, expires) VALUES (?, ?, ?, ?)
			ON CONFLICT (program, key) DO UPDATE SET value = excluded.value, expires = excluded.expires`, program, key, value, expires)
		return err
	})
	if err != nil {
		return fmt.Errorf("cluster: writing %s of %s: %w", key, program, err)
	}
	return nil
}

// checkQuota refuses, inside a write (after the expired keys went), a
// value of size bytes under key that would take the program past q.
func checkQuota(tx *sql.Tx, program, key string, size int, q Quota) error {
	if q.Keys <= 0 && q.Bytes <= 0 {
		return nil
	}
	var keys int
	var bytes int64
	// The key's current value, if any, is replaced: it does not count.
	err := tx.QueryRow(`SELECT count(*), coalesce(sum(length(key) + length(value)), 0) FROM kv
		WHERE program = ? AND key != ?`, program, key).Scan(&keys, &bytes)
	if err != nil {
		return err
	}
	if q.Keys > 0 && keys+1 > q.Keys {
		return fmt.Errorf("%w: the program holds %d keys, at most %d", ErrQuota, keys, q.Keys)
	}
	if add := int64(len(key) + size); q.Bytes > 0 && bytes+add > q.Bytes {
		return fmt.Errorf("%w: the program's other keys hold %d bytes, this one %d more, at most %d in all", ErrQuota, bytes, add, q.Bytes)
	}
	return nil
}

// KVDelete removes a program's key, fenced like KVPut. Deleting a key
// that is not there (or expired) is ErrNoKey.
func (n *Node) KVDelete(ctx context.Context, program, key string, token int64) error {
	err := n.tx(ctx, func(tx *sql.Tx) error {
		if err := n.fence(tx, program, token); err != nil {
			return err
		}
		res, err := tx.Exec(`DELETE FROM kv WHERE program = ? AND key = ? AND `+live, program, key, nowMillis())
		if err != nil {
			return err
		}
		if count, _ := res.RowsAffected(); count == 0 {
			return fmt.Errorf("%w: %s", ErrNoKey, key)
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("cluster: deleting %s of %s: %w", key, program, err)
	}
	return nil
}

// ExpireKeys deletes every program's expired keys and returns how many
// went.
func (n *Node) ExpireKeys(ctx context.Context) (int64, error) {
	var count int64
	err := n.tx(ctx, func(tx *sql.Tx) error {
		res, err := tx.Exec(`DELETE FROM kv WHERE expires != 0 AND expires <= ?`, nowMillis())
		if err != nil {
			return err
		}
		count, _ = res.RowsAffected()
		return nil
	})
	if err != nil {
		return 0, fmt.Errorf("cluster: deleting expired keys: %w", err)
	}
	return count, nil
}

// SweepKeys deletes the expired keys every period while this node is
// the leader, until ctx ends (reads never see expired keys: this only
// frees their space).
func (n *Node) SweepKeys(ctx context.Context, period time.Duration) {
	tick := time.NewTicker(period)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		if !n.IsLeader(ctx) {
			continue
		}
		if count, err := n.ExpireKeys(ctx); err != nil {
			n.log.Warn("cluster: sweeping expired keys", "err", err)
		} else if count > 0 {
			n.log.Debug("cluster: expired keys deleted", "keys", count)
		}
	}
}

// fence checks, inside a write, that token is the program's current token
// on this node. Token 0 (an on-demand program's) is not fenced unless the
// program is placed as persistent now: an ended assignment (an empty node, the
// row kept for its token) is a program no longer persistent, whose
// on-demand VMs write without a token.
func (n *Node) fence(tx *sql.Tx, program string, token int64) error {
	var node string
	var current int64
	err := tx.QueryRow(`SELECT node, token FROM assignments WHERE program = ?`, program).Scan(&node, &current)
	if err != nil && !errors.Is(err, sql.ErrNoRows) {
		return err
	}
	if token == 0 {
		if err == nil && node != "" {
			// A persistent program (it is placed): its writes carry its
			// token, or a copy that lost it could still write.
			return fmt.Errorf("%w (no token given; the program is persistent, its token is %d on %q)", ErrStaleToken, current, node)
		}
		return nil
	}
	if err != nil || node != n.opt.Name || current != token {
		return fmt.Errorf("%w (token %d, the program's is %d on %q)", ErrStaleToken, token, current, node)
	}
	return nil
}
