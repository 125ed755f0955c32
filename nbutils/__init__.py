"""nbutils: the helper package of the companion to two papers.

Paper A: "An Illusion of Unlearning? Assessing Machine Unlearning Through Internal Representations"
Paper B: "Deep Neural Regression Collapse".

Everything the numbered notebooks reuse lives here, one module per concern (see README.md).
"""
__version__ = "0.1.0"
