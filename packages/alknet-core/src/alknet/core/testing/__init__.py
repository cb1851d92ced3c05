"""alknet.core.testing"""
