package cluster

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"time"
)

// Where a program's record came from.
const (
	SourceFile = "file" // an agent's configuration file, loaded at its start
	SourceAPI  = "api"  // the admin API (program deploy)
)

// ErrNotFound is a program the cluster does not have.
var ErrNotFound = errors.New("no such program")

// ErrExists is a deploy of an id the cluster already has.
var ErrExists = errors.New("program already deployed")

// Program is a deployed program as the cluster keeps it: its manifest (the
// agent's JSON manifest, kept as it was given) and the revision of the
// program set at which it last changed.
type Program struct {
	ID       string
	Manifest []byte
	Revision int64
	Source   string
	Updated  time.Time
}

// programsRevision names the counter that goes up with every change to
// the set of programs.
const programsRevision = "programs"

// PutProgram stores a program's manifest. With replace false, an id that
// exists already is ErrExists; with replace true it is overwritten. It
// returns the new revision.
func (n *Node) PutProgram(ctx context.Context, id string, manifest []byte, source string, replace bool) (int64, error) {
	var rev int64
	err := n.tx(ctx, func(tx *sql.Tx) error {
		var old []byte
		err := tx.QueryRow(`SELECT manifest FROM programs WHERE id = ?`, id).Scan(&old)
		switch {
		case err == nil && !replace:
			return fmt.Errorf("%w: %s", ErrExists, id)
		case err == nil && string(old) == string(manifest):
			return tx.QueryRow(`SELECT revision FROM programs WHERE id = ?`, id).Scan(&rev)
		case err != nil && !errors.Is(err, sql.ErrNoRows):
			return err
		}
		if rev, err = bump(tx, programsRevision); err != nil {
			return err
		}
		_, err = tx.Exec(`INSERT INTO programs (id, manifest, revision, source, updated) VALUES (?, ?, ?, ?, ?)
			ON CONFLICT (id) DO UPDATE SET manifest = excluded.manifest, revision = excluded.revision,
			source = excluded.source, updated = excluded.updated`,
			id, string(manifest), rev, source, time.Now().Unix())
		return err
	})
	if err != nil {
		return 0, fmt.Errorf("cluster: storing program %s: %w", id, err)
	}
	return rev, nil
}

// DeleteProgram removes a program and its key-value data; its assignment,
// if any, is ended (the owner stops it at its next renewal).
func (n *Node) DeleteProgram(ctx context.Context, id string) error {
	err := n.tx(ctx, func(tx *sql.Tx) error {
		res, err := tx.Exec(`DELETE FROM programs WHERE id = ?`, id)
		if err != nil {
			return err
		}
		if count, _ := res.RowsAffected(); count == 0 {
			return fmt.Errorf("%w: %s", ErrNotFound, id)
		}
		if _, err := bump(tx, programsRevision); err != nil {
			return err
		}
		if _, err := tx.Exec(`UPDATE assignments SET node = '' WHERE program = ?`, id); err != nil {
			return err
		}
		_, err = tx.Exec(`DELETE FROM kv WHERE program = ?`, id)
		return err
	})
	if err != nil {
		return fmt.Errorf("cluster: deleting program %s: %w", id, err)
	}
	return nil
}

// Programs returns every program and the revision of the set.
func (n *Node) Programs(ctx context.Context) ([]Program, int64, error) {
	var progs []Program
	var rev int64
	err := n.query(ctx, func(ctx context.Context, db *sql.DB) error {
		progs, rev = nil, 0
		if err := db.QueryRowContext(ctx, `SELECT COALESCE((SELECT value FROM counters WHERE name = ?), 0)`, programsRevision).Scan(&rev); err != nil {
			return err
		}
		rows, err := db.QueryContext(ctx, `SELECT id, manifest, revision, source, updated FROM programs ORDER BY id`)
		if err != nil {
			return err
		}
		defer rows.Close()
		for rows.Next() {
			var p Program
			var manifest string
			var updated int64
			if err := rows.Scan(&p.ID, &manifest, &p.Revision, &p.Source, &updated); err != nil {
				return err
			}
			p.Manifest, p.Updated = []byte(manifest), time.Unix(updated, 0)
			progs = append(progs, p)
		}
		return rows.Err()
	})
	if err != nil {
		return nil, 0, fmt.Errorf("cluster: listing programs: %w", err)
	}
	return progs, rev, nil
}

// ProgramsRevision returns the revision of the set of programs: it goes up
// with every change, so a node polls it to learn of deploys elsewhere.
func (n *Node) ProgramsRevision(ctx context.Context) (int64, error) {
	var rev int64
	err := n.query(ctx, func(ctx context.Context, db *sql.DB) error {
		return db.QueryRowContext(ctx, `SELECT COALESCE((SELECT value FROM counters WHERE name = ?), 0)`, programsRevision).Scan(&rev)
	})
	return rev, err
}
