"""Write scikit-learn's bundled breast-cancer dataset to data.csv (no download: it ships with sklearn)."""

from pathlib import Path

from sklearn.datasets import load_breast_cancer


def main() -> None:
    frame = load_breast_cancer(as_frame=True).frame
    frame.columns = [c.replace(" ", "_") for c in frame.columns]
    frame["target"] = frame["target"].map({0: "malignant", 1: "benign"})
    frame.to_csv(Path(__file__).with_name("data.csv"), index=False, float_format="%.6g")


if __name__ == "__main__":
    main()
