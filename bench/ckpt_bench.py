"""Checkpoint store benchmark: commit / verify / hash throughput against ``cp -r``, bytes per push.

    .venv/bin/python bench/ckpt_bench.py                    # 1 GiB across 4 files, in $TMPDIR
    .venv/bin/python bench/ckpt_bench.py --size-mb 256 --files 8 --dir /mnt/volume --json out.json

What it measures (same bytes, same disk, one directory):

* hash      -- sha256 of the checkpoint with the commit's thread pool (and single-threaded);
* cp        -- ``cp -r`` of the staged directory (page cache clean: the data was synced first);
* commit    -- ``commit_checkpoint``: hash + fsync every file + manifest + rename + latest swap;
               target: within 1.5x of ``cp -r`` plus hashing;
* commit (dirty) -- the same on freshly written, unsynced data (what a trainer just wrote: the
               fsync pays the write-back), against ``cp -r`` + ``sync`` + hashing;
* verify    -- ``verify_checkpoint`` (rehash against the manifest);
* push      -- bytes sent by a push where one of N files changed, to the filesystem remote and to
               the local Hub look-alike (relay_testkit/hub_server.py, real huggingface_hub client);
               and a re-push of the unchanged checkpoint (target: 0 bytes).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))
os.environ.setdefault("HF_HUB_DISABLE_XET", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")

from relay.ckpt import RunLayout, commit_checkpoint, find_complete_staged, verify_checkpoint  # noqa: E402
from relay.ckpt.manifest import hash_tree, list_checkpoint_files  # noqa: E402

MiB = 1024 * 1024
GB = 1e9


def write_checkpoint(d: Path, size_mb: int, files: int, *, seed_block: bytes) -> list[str]:
    """``files`` files of random-looking bytes totalling ``size_mb`` MiB, plus a COMPLETE marker."""
    d.mkdir(parents=True)
    per = size_mb * MiB // files
    names = []
    for i in range(files):
        name = f"model-{i:05d}-of-{files:05d}.safetensors"
        with open(d / name, "wb") as f:
            written = 0
            while written < per:
                n = min(len(seed_block), per - written)
                # vary every block so no two files (or blocks) share content
                f.write(os.urandom(16) + seed_block[16:n] if n > 16 else seed_block[:n])
                written += n
        names.append(name)
    (d / "config.json").write_text('{"bench": true}')
    (d / "COMPLETE").write_text("")
    return names


def timed(fn) -> tuple[float, object]:
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def cpu_timed(fn) -> tuple[float, float]:
    """(wall seconds, CPU seconds of this process, all threads)."""
    c0, t0 = time.process_time(), time.perf_counter()
    fn()
    return time.perf_counter() - t0, time.process_time() - c0


def sync() -> None:
    os.sync()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size-mb", type=int, default=1024, help="checkpoint size in MiB (default 1024)")
    parser.add_argument("--files", type=int, default=4, help="number of weight files (default 4)")
    parser.add_argument("--dir", default=None, help="where to work (default: a temp dir in $TMPDIR)")
    parser.add_argument("--skip-hub", action="store_true", help="skip the push to the local Hub look-alike")
    parser.add_argument("--json", default=None, help="also write the figures to this JSON file")
    args = parser.parse_args(argv)

    work = Path(tempfile.mkdtemp(prefix="ckpt-bench-", dir=args.dir))
    seed_block = os.urandom(8 * MiB)
    size = args.size_mb * MiB
    fig: dict[str, object] = {
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "size_bytes": size,
        "files": args.files,
        "cpus": os.cpu_count(),
        "dir": str(work),
    }
    try:
        layout = RunLayout(work / "relay", "bench")
        layout.ensure()
        staged = layout.staging_dir / "step_1"
        write_checkpoint(staged, args.size_mb, args.files, seed_block=seed_block)
        sync()
        rels = list_checkpoint_files(staged)

        load_before = os.getloadavg()[0]
        t_hash, cpu_hash = cpu_timed(lambda: hash_tree(staged, rels))
        t_hash1, _ = timed(lambda: hash_tree(staged, rels, workers=1))
        t_cp, _ = timed(lambda: subprocess.run(["cp", "-r", str(staged), str(work / "cp_copy")], check=True))
        t_cp_sync, _ = timed(sync)
        shutil.rmtree(work / "cp_copy")
        sync()

        [s] = find_complete_staged(layout.staging_dir)
        t_commit, ckpt = timed(lambda: commit_checkpoint(layout, s, epoch=1, keep_last_n=10))
        t_verify, res = timed(lambda: verify_checkpoint(ckpt.path))
        assert res.ok

        # dirty: freshly written, not synced
        staged2 = layout.staging_dir / "step_2"
        write_checkpoint(staged2, args.size_mb, args.files, seed_block=seed_block)
        [s2] = [x for x in find_complete_staged(layout.staging_dir) if x.step == 2]
        t_commit_dirty, ckpt2 = timed(lambda: commit_checkpoint(layout, s2, epoch=1, keep_last_n=10))
        staged3 = work / "dirty_cp_src"
        write_checkpoint(staged3, args.size_mb, args.files, seed_block=seed_block)
        sync()
        t_cp2, _ = timed(lambda: subprocess.run(["cp", "-r", str(staged3), str(work / "cp2")], check=True))
        t_sync2, _ = timed(sync)
        shutil.rmtree(work / "cp2")
        shutil.rmtree(staged3)

        fig.update(
            hash_s=t_hash,
            hash_gbps=size / t_hash / GB,
            hash_1thread_gbps=size / t_hash1 / GB,
            hash_gb_per_cpu_second=size / cpu_hash / GB,
            loadavg_1min_at_start=load_before,
            cp_s=t_cp,
            cp_sync_s=t_cp_sync,
            commit_s=t_commit,
            commit_gbps=size / t_commit / GB,
            commit_vs_cp_plus_hash=t_commit / (t_cp + t_hash),
            commit_dirty_s=t_commit_dirty,
            commit_dirty_vs_cp_sync_plus_hash=t_commit_dirty / (t_cp2 + t_sync2 + t_hash),
            verify_s=t_verify,
            verify_gbps=size / t_verify / GB,
        )

        # pushes: one of N files changed between step 2 and step 3
        staged4 = layout.staging_dir / "step_3"
        shutil.copytree(ckpt2.path, staged4, copy_function=os.link)
        (staged4 / "manifest.json").unlink()
        first = sorted(p for p in staged4.glob("model-*"))[0]
        first.unlink()
        with open(first, "wb") as f:
            f.write(os.urandom(size // args.files))
        [s4] = [x for x in find_complete_staged(layout.staging_dir) if x.step == 3]
        ckpt3 = commit_checkpoint(layout, s4, epoch=1, keep_last_n=10)
        changed = size // args.files

        from relay.remote import open_remote

        fs = open_remote(f"file://{work / 'remote'}", "bench")
        t_fs1, r1 = timed(lambda: fs.push(ckpt2, epoch=1))
        t_fs2, r2 = timed(lambda: fs.push(ckpt3, epoch=1))
        fig.update(
            fs_push_full_bytes=r1.bytes_sent,
            fs_push_full_s=t_fs1,
            fs_push_one_changed_bytes=r2.bytes_sent,
            fs_push_one_changed_s=t_fs2,
            changed_file_bytes=changed,
            fs_repush_unchanged_bytes=fs.push(ckpt3, epoch=1).bytes_sent,
        )
        if not args.skip_hub:
            from relay_testkit.hub_server import HubServer

            with HubServer(work / "hubdata") as hub:
                remote = open_remote("hf://bench/ckpts", "bench", endpoint=hub.url)
                t_h1, h1 = timed(lambda: remote.push(ckpt2, epoch=1))
                hub.reset_stats()
                t_h2, h2 = timed(lambda: remote.push(ckpt3, epoch=1))
                wire2 = hub.stats.bytes_received
                hub.reset_stats()
                h3 = remote.push(ckpt3, epoch=1)
                wire3 = hub.stats.bytes_received
                fig.update(
                    hub_push_full_s=t_h1,
                    hub_push_full_bytes=h1.bytes_sent,
                    hub_push_one_changed_s=t_h2,
                    hub_push_one_changed_bytes_reported=h2.bytes_sent,
                    hub_push_one_changed_bytes_on_wire=wire2,
                    hub_repush_unchanged_bytes_on_wire=wire3,
                    hub_repush_noop=h3.noop,
                )
    finally:
        shutil.rmtree(work, ignore_errors=True)

    print(f"$ {fig['command']}")
    print(
        f"checkpoint: {size / MiB:.0f} MiB in {args.files} files, {fig['cpus']} CPUs "
        f"(load average {fig['loadavg_1min_at_start']:.1f} at start), dir {fig['dir']}"
    )
    print(
        f"  hash (pool)        {fig['hash_gbps']:.2f} GB/s   (1 thread {fig['hash_1thread_gbps']:.2f} GB/s; "
        f"{fig['hash_gb_per_cpu_second']:.2f} GB per CPU-second)"
    )
    print(f"  cp -r              {fig['cp_s']:.2f} s  (+ sync {fig['cp_sync_s']:.2f} s)")
    print(
        f"  commit             {fig['commit_s']:.2f} s = {fig['commit_gbps']:.2f} GB/s; "
        f"{fig['commit_vs_cp_plus_hash']:.2f}x of cp+hash (target <= 1.5x)"
    )
    print(
        f"  commit, dirty data {fig['commit_dirty_s']:.2f} s; "
        f"{fig['commit_dirty_vs_cp_sync_plus_hash']:.2f}x of cp+sync+hash"
    )
    print(f"  verify             {fig['verify_s']:.2f} s = {fig['verify_gbps']:.2f} GB/s")
    print(
        f"  fs push            full {fig['fs_push_full_bytes']} B in {fig['fs_push_full_s']:.2f} s; "
        f"1 of {args.files} files changed: {fig['fs_push_one_changed_bytes']} B "
        f"(changed file {fig['changed_file_bytes']} B) in {fig['fs_push_one_changed_s']:.2f} s; "
        f"re-push {fig['fs_repush_unchanged_bytes']} B"
    )
    if "hub_push_full_s" in fig:
        print(
            f"  hub push           full {fig['hub_push_full_bytes']} B in {fig['hub_push_full_s']:.2f} s; "
            f"1 changed: {fig['hub_push_one_changed_bytes_on_wire']} B on the wire "
            f"(reported {fig['hub_push_one_changed_bytes_reported']}) in {fig['hub_push_one_changed_s']:.2f} s; "
            f"re-push {fig['hub_repush_unchanged_bytes_on_wire']} B on the wire"
        )
    if args.json:
        Path(args.json).write_text(json.dumps(fig, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
