"""Tests of the `skrr_onnx` Python API as installed from the wheel (run by tests/wheel.rs with the
wheel's venv's python, in a scrubbed environment).

    python wheel_api.py --venv VENV --fixture MODEL.onnx --work DIR [TESTS...]

`Arguments` and `Running` drive the package with a stand-in binary (`SKRR_ONNX_BIN`) that echoes
its command line or fails on demand; `Installed` runs the real binary the wheel installed.
"""

import argparse
import io
import json
import os
import signal
import sys
import tempfile
import unittest
from pathlib import Path

import skrr_onnx
from skrr_onnx import SkrrError

ARGS = argparse.Namespace()

STAND_IN = """\
import json, os, signal, sys, time
mode = os.environ.get("STAND_IN", "echo")
if mode == "echo":
    print(json.dumps({"argv": sys.argv[1:], "stderr_is_terminal": os.isatty(2)}))
elif mode == "fail":
    sys.stderr.write("a log line\\nerror: boom: it broke\\n")
    sys.exit(4)
elif mode == "failed-check":
    print(json.dumps({"passed": False}))
    sys.stderr.write("FAILED\\nerror: fidelity check FAILED: cos_mean 0.5 < 0.9\\n")
    sys.exit(1)
elif mode == "live":
    sys.stderr.write("first line\\n")
    sys.stderr.flush()
    for _ in range(400):
        if os.path.exists(os.environ["STAND_IN_GO"]):
            print("{}")
            sys.exit(0)
        time.sleep(0.025)
    sys.exit(9)
elif mode == "killed":
    os.kill(os.getpid(), signal.SIGKILL)
elif mode == "no-json":
    print("not a JSON document")
"""


class Recorder(io.TextIOBase):
    """A `sys.stderr` that records what is written and calls `on_write` with all of it so far."""

    def __init__(self, on_write=None):
        self.text = ""
        self.on_write = on_write

    def write(self, s):
        self.text += s
        if self.on_write:
            self.on_write(self.text)
        return len(s)


class StandIn(unittest.TestCase):
    """Runs the package against the stand-in binary with `sys.stderr` recorded."""

    def setUp(self):
        self.dir = tempfile.TemporaryDirectory()
        stand_in = Path(self.dir.name) / "skrr-onnx"
        stand_in.write_text(f"#!{sys.executable}\n{STAND_IN}")
        stand_in.chmod(0o755)
        self.saved = dict(os.environ), sys.stderr
        os.environ["SKRR_ONNX_BIN"] = str(stand_in)
        sys.stderr = self.stderr = Recorder()

    def tearDown(self):
        environ, sys.stderr = self.saved
        os.environ.clear()
        os.environ.update(environ)
        self.dir.cleanup()

    def argv(self, function, *args, **options):
        os.environ["STAND_IN"] = "echo"
        return function(*args, **options)["argv"]


class Arguments(StandIn):
    def test_every_form_of_option(self):
        argv = self.argv(
            skrr_onnx.prune,
            "in.onnx",
            Path("out.onnx"),
            0.25,
            min_cos=0.7,
            no_reuse=True,
            no_null=False,
            beam=None,
            null_ids=[0, 1],
            verbose=2,
            external_data=True,
            pad_id=-1,
            plan_out=Path("p.json"),
            cache_mem="4G",
            threads=2,
            provider="cpu",
            time_limit=1e-5,
        )
        self.assertEqual(
            argv,
            [
                "--json",
                "--min-cos=0.7",
                "--no-reuse",
                "--null-ids=0,1",
                "-vv",
                "--external-data",
                "--pad-id=-1",
                "--plan-out=p.json",
                "--cache-mem=4G",
                "--threads=2",
                "--provider=cpu",
                "--time-limit=1e-05",
                "--sparsity=0.25",
                "--",
                "in.onnx",
                "out.onnx",
            ],
        )

    def test_subcommands_take_their_positionals_after_double_dash(self):
        self.assertEqual(
            self.argv(skrr_onnx.plan, "plan", "out.json", sweep=[0.1, 0.25], compensate="merged"),
            [
                "plan",
                "--json",
                "--sweep=0.1,0.25",
                "--compensate=merged",
                "--output=out.json",
                "--",
                "plan",
            ],
        )
        self.assertEqual(
            self.argv(skrr_onnx.plan, "m.onnx", "o.json", 0.5),
            ["plan", "--json", "--output=o.json", "--sparsity=0.5", "--", "m.onnx"],
        )
        self.assertEqual(
            self.argv(skrr_onnx.apply, "a", "p", "b", external_data="w.bin", reuse_weights="copy"),
            [
                "apply",
                "--json",
                "--external-data=w.bin",
                "--reuse-weights=copy",
                "--",
                "a",
                "p",
                "b",
            ],
        )
        self.assertEqual(
            self.argv(skrr_onnx.score, "m", "p", compensate="linear", heldout="h.txt"),
            ["score", "--json", "--compensate=linear", "--heldout=h.txt", "--plan=p", "--", "m"],
        )
        self.assertEqual(
            self.argv(skrr_onnx.compare, "d", "p", max_d=2, include_padding=True, max_length=256),
            [
                "compare",
                "--json",
                "--max-d=2",
                "--include-padding",
                "--max-length=256",
                "--",
                "d",
                "p",
            ],
        )
        self.assertEqual(
            self.argv(skrr_onnx.inspect, "m", verbose=0), ["inspect", "--json", "--", "m"]
        )
        self.assertEqual(
            self.argv(skrr_onnx.convert, "a", "b", inline=True),
            ["convert", "--json", "--inline", "--", "a", "b"],
        )
        self.assertEqual(
            self.argv(skrr_onnx.doctor, provider="cuda"),
            ["doctor", "--json", "--provider=cuda", "--"],
        )

    def test_unknown_keywords_and_bad_values_are_refused_before_running(self):
        os.environ["SKRR_ONNX_BIN"] = "/nonexistent/skrr-onnx"  # running would raise OSError
        with self.assertRaisesRegex(
            TypeError,
            r"prune\(\) got an unexpected keyword argument "
            r"'min_co'; did you mean 'min_cos'\?",
        ):
            skrr_onnx.prune("a", "b", 0.5, min_co=0.9)
        with self.assertRaisesRegex(TypeError, r"unexpected keyword argument 'sweep'"):
            skrr_onnx.prune("a", "b", 0.5, sweep=[0.1])  # a plan option, not the main job's
        with self.assertRaisesRegex(TypeError, r"unexpected keyword argument 'min_cos'"):
            skrr_onnx.score("m", "p", min_cos=0.9)
        with self.assertRaisesRegex(TypeError, r"beam=True is not of type int"):
            skrr_onnx.prune("a", "b", 0.5, beam=True)
        with self.assertRaisesRegex(TypeError, r"min_cos='0.9' is not of type float"):
            skrr_onnx.prune("a", "b", 0.5, min_cos="0.9")
        with self.assertRaisesRegex(TypeError, r"null_ids='0,1' is not of type Sequence\[int\]"):
            skrr_onnx.prune("a", "b", 0.5, null_ids="0,1")
        with self.assertRaisesRegex(TypeError, r"no_reuse=1 is not of type bool"):
            skrr_onnx.prune("a", "b", 0.5, no_reuse=1)
        with self.assertRaisesRegex(
            ValueError,
            r"method='greedy' is not one of 'skrr', "
            r"'finercut', 'shortgpt'",
        ):
            skrr_onnx.prune("a", "b", 0.5, method="greedy")
        with self.assertRaisesRegex(ValueError, r"sweep=\[\] needs at least one value"):
            skrr_onnx.plan("m", "o", sweep=[])
        with self.assertRaisesRegex(ValueError, r"verbose=-1 is negative"):
            skrr_onnx.doctor(verbose=-1)

    def test_interface_lists_every_function(self):
        interface = skrr_onnx._interface()
        self.assertEqual(
            sorted(interface), sorted(set(skrr_onnx.__all__) - {"SkrrError", "binary"})
        )
        self.assertEqual(interface["apply"]["positionals"], ["input", "plan", "output"])
        self.assertEqual(interface["prune"]["options"]["external_data"], "optional")


class Running(StandIn):
    def test_failure_raises_with_code_and_one_line_message(self):
        os.environ["STAND_IN"] = "fail"
        with self.assertRaises(SkrrError) as caught:
            skrr_onnx.inspect("m.onnx")
        self.assertEqual((caught.exception.code, caught.exception.message), (4, "boom: it broke"))
        self.assertIsNone(caught.exception.report)
        self.assertIn("a log line\nerror: boom: it broke\n", self.stderr.text)

    def test_failed_check_keeps_its_report(self):
        os.environ["STAND_IN"] = "failed-check"
        with self.assertRaises(SkrrError) as caught:
            skrr_onnx.compare("d", "p")
        self.assertEqual(caught.exception.code, 1)
        self.assertEqual(caught.exception.message, "fidelity check FAILED: cos_mean 0.5 < 0.9")
        self.assertEqual(caught.exception.report, {"passed": False})

    def test_stderr_is_forwarded_while_the_binary_runs(self):
        # The stand-in waits for a file that is created only once its first line has reached
        # sys.stderr: output held back until the end would make it exit 9.
        go = Path(self.dir.name) / "go"
        os.environ.update(STAND_IN="live", STAND_IN_GO=str(go))
        sys.stderr = Recorder(lambda text: "first line\n" in text and go.touch())
        self.assertEqual(skrr_onnx.doctor(), {})

    def test_signal_and_missing_document(self):
        os.environ["STAND_IN"] = "killed"
        with self.assertRaises(SkrrError) as caught:
            skrr_onnx.doctor()
        self.assertEqual(
            (caught.exception.code, caught.exception.message),
            (128 + signal.SIGKILL, "killed by signal SIGKILL"),
        )
        os.environ["STAND_IN"] = "no-json"
        with self.assertRaisesRegex(SkrrError, "printed no JSON document") as caught:
            skrr_onnx.doctor()
        self.assertEqual(caught.exception.code, 70)

    def test_terminal_stderr_goes_through_a_pseudo_terminal(self):
        # With sys.stderr on a terminal the binary's stderr is one too (its progress bars show),
        # and the error line is still captured.
        reader, writer = os.openpty()
        terminal = os.fdopen(writer, "w")
        try:
            sys.stderr = terminal
            os.environ["STAND_IN"] = "echo"
            self.assertTrue(skrr_onnx.doctor()["stderr_is_terminal"])
            os.environ["STAND_IN"] = "fail"
            with self.assertRaises(SkrrError) as caught:
                skrr_onnx.doctor()
            terminal.flush()
            self.assertEqual(caught.exception.message, "boom: it broke")
            self.assertIn(b"error: boom: it broke", os.read(reader, 65536))
        finally:
            sys.stderr = self.stderr
            terminal.close()
            os.close(reader)


class Installed(unittest.TestCase):
    """The binary the wheel installed, found with nothing set."""

    def test_binary_is_the_one_installed_with_the_package(self):
        self.assertNotIn("SKRR_ONNX_BIN", os.environ)
        self.assertEqual(Path(skrr_onnx.binary()), Path(ARGS.venv).resolve() / "bin" / "skrr-onnx")

    def test_doctor_finds_the_wheels_onnxruntime(self):
        found = skrr_onnx.doctor()
        venv = Path(ARGS.venv).resolve()
        self.assertTrue(found["found"] and found["provider_ok"], found)
        self.assertEqual(found["source"], f"python environment of this executable ({venv})")
        self.assertTrue(Path(found["library"]).is_relative_to(venv / "lib"), found["library"])

    def test_prune_returns_the_report(self):
        work = Path(ARGS.work)
        out, report_file = work / "api-pruned.onnx", work / "api-report.json"
        report = skrr_onnx.prune(
            ARGS.fixture,
            out,
            0.25,
            min_cos=0.7,
            num_prompts=16,
            report=report_file,
            plan_out=work / "api-plan.json",
        )
        self.assertEqual(report, json.loads(report_file.read_text()))
        self.assertEqual(report["output"], str(out))
        self.assertEqual(report["written"]["model_bytes"], out.stat().st_size)
        self.assertTrue(report["fidelity"]["passed"])
        self.assertTrue(report["verdict"].startswith("PASSED"), report["verdict"])
        self.assertEqual(report["layers"], skrr_onnx.inspect(ARGS.fixture)["layers"])
        compared = skrr_onnx.compare(ARGS.fixture, out, min_cos=0.7, num_prompts=16)
        self.assertTrue(compared["passed"])
        with self.assertRaises(SkrrError) as caught:
            skrr_onnx.compare(ARGS.fixture, out, min_cos=0.999, num_prompts=16)
        self.assertEqual(caught.exception.code, 1)
        self.assertFalse(caught.exception.report["passed"])

    def test_failures_raise_with_the_documented_codes(self):
        work = Path(ARGS.work)
        missing = work / "missing.onnx"
        with self.assertRaises(SkrrError) as caught:
            skrr_onnx.prune(missing, work / "never.onnx", 0.25)
        self.assertEqual(caught.exception.code, 3)
        self.assertTrue(
            caught.exception.message.startswith(f"{missing}: cannot read the model"),
            caught.exception.message,
        )
        with self.assertRaises(SkrrError) as caught:
            skrr_onnx.prune(ARGS.fixture, work / "never.onnx", 1.5)
        self.assertEqual(
            (caught.exception.code, caught.exception.message),
            (2, "target sparsity 1.5 must lie strictly between 0 and 1"),
        )
        self.assertFalse((work / "never.onnx").exists())


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--venv", required=True)
    parser.add_argument("--fixture", required=True)
    parser.add_argument("--work", required=True)
    _, tests = parser.parse_known_args(namespace=ARGS)  # e.g. `Running` to run one class
    unittest.main(argv=[sys.argv[0], "-v", *tests])
