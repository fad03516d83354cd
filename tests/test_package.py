"""The package's two parts stay apart: what --user-dir imports is the plugin alone."""
import subprocess
import sys


def test_importing_the_plugin_registers_its_criteria_and_tasks_and_imports_none_of_the_recipes():
    code = ("import sys, rdrop_fairseq\n"
            "from fairseq.criterions import CRITERION_REGISTRY\n"
            "from fairseq.tasks import TASK_REGISTRY\n"
            "print(sorted(n for n in CRITERION_REGISTRY if n.startswith('rdrop_')))\n"
            "print(sorted(n for n in TASK_REGISTRY if n.startswith('rdrop_')))\n"
            "print(sorted(m for m in sys.modules if m.startswith('rdrop_fairseq.recipes')))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    criteria, tasks, recipes = out.strip().splitlines()
    assert criteria == str(["rdrop_adaptive_loss", "rdrop_cross_entropy", "rdrop_label_smoothed_cross_entropy",
                            "rdrop_sentence_prediction"])
    assert tasks == str(["rdrop_language_modeling", "rdrop_sentence_prediction", "rdrop_translation"])
    assert recipes == "[]"
